//! JSON Schemas of rules, and how a violation reads.

use std::sync::Arc;

use serde_json::Value;

/// A JSON Schema that cannot be used, or a value that does not match one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema library cannot read the document.
    #[error("schema: {0}")]
    Unusable(String),
    /// The schema does not match its metaschema: up to three reasons.
    #[error("schema is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A value does not match the schema: up to three violations, one line each (`at /path:
    /// what is wrong`).
    #[error("{}", .0.join("; "))]
    Violations(Vec<String>),
}

/// A compiled JSON Schema (drafts 4, 6 and 7; `$ref` within the document).
#[derive(Debug, Clone)]
pub struct Schema(Arc<Value>);

impl Schema {
    /// Checks the schema against its metaschema.
    pub fn new(schema: Value) -> Result<Schema, SchemaError> {
        let cfg = jsonschema_valid::Config::from_schema(&schema, None)
            .map_err(|e| SchemaError::Unusable(e.to_string()))?;
        if let Err(errs) = cfg.validate_schema() {
            return Err(SchemaError::Invalid(
                errs.take(3).map(|e| e.to_string()).collect(),
            ));
        }
        drop(cfg);
        Ok(Schema(Arc::new(schema)))
    }

    /// Validates a value; the error names up to three violations.
    pub fn validate(&self, v: &Value) -> Result<(), SchemaError> {
        let cfg = jsonschema_valid::Config::from_schema(&self.0, None)
            .map_err(|e| SchemaError::Unusable(e.to_string()))?;
        let r = match cfg.validate(v) {
            Ok(()) => Ok(()),
            // One line per violation: where in the value, and what is wrong (the error's own
            // Display adds the pretty-printed instance and schema over several lines).
            Err(errs) => Err(SchemaError::Violations(
                errs.take(3).map(|e| violation(&e)).collect(),
            )),
        };
        r
    }
}

/// `at /items/0: "x" is not of type "integer"`: a schema violation on one line, the path in the
/// value first (the library keeps it innermost first).
fn violation(e: &jsonschema_valid::ValidationError) -> String {
    let path: Vec<&str> = e.instance_path.iter().rev().map(String::as_str).collect();
    let msg = e.msg.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("at /{}: {msg}", path.join("/"))
}
