//! JSON Schemas of rules, and how a violation reads.

use std::sync::Arc;

use serde_json::Value;

/// A compiled JSON Schema (drafts 4, 6 and 7; `$ref` within the document).
#[derive(Debug, Clone)]
pub struct Schema(Arc<Value>);

impl Schema {
    /// Checks the schema against its metaschema.
    pub fn new(schema: Value) -> Result<Schema, String> {
        let cfg = jsonschema_valid::Config::from_schema(&schema, None)
            .map_err(|e| format!("schema: {e}"))?;
        if let Err(errs) = cfg.validate_schema() {
            let msgs: Vec<String> = errs.take(3).map(|e| e.to_string()).collect();
            return Err(format!("schema is not valid: {}", msgs.join("; ")));
        }
        drop(cfg);
        Ok(Schema(Arc::new(schema)))
    }

    /// Validates a value; the error names up to three violations.
    pub fn validate(&self, v: &Value) -> Result<(), String> {
        let cfg = jsonschema_valid::Config::from_schema(&self.0, None)
            .map_err(|e| format!("schema: {e}"))?;
        let r = match cfg.validate(v) {
            Ok(()) => Ok(()),
            Err(errs) => {
                // One line per violation: where in the value, and what is wrong (the error's own
                // Display adds the pretty-printed instance and schema over several lines).
                let msgs: Vec<String> = errs.take(3).map(|e| violation(&e)).collect();
                Err(msgs.join("; "))
            }
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
