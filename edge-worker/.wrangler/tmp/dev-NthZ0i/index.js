var __defProp = Object.defineProperty;
var __name = (target, value) => __defProp(target, "name", { value, configurable: true });

// build/index.js
import { WorkerEntrypoint as Ie } from "cloudflare:workers";
import ee from "./04a341c4d7f2149947ffec3eaeed92e726004082-index_bg.wasm";
var K = globalThis.__worker_init_state = { criticalError: false, instanceId: 0 };
var x = class {
  static {
    __name(this, "x");
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, le.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_containerstartupoptions_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  get enableInternet() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_containerstartupoptions_enableInternet(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e === 16777215 ? void 0 : e !== 0;
  }
  get entrypoint() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_containerstartupoptions_entrypoint(this.__wbg_ptr);
    } catch (n) {
      s(n);
    }
    var t = oe(e[0], e[1]);
    return i.__wbindgen_free(e[0], e[1] * 4, 4), t;
  }
  get env() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_containerstartupoptions_env(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e;
  }
  set enableInternet(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_containerstartupoptions_enableInternet(this.__wbg_ptr, b(e) ? 16777215 : e ? 1 : 0);
    } catch (t) {
      s(t);
    }
  }
  set entrypoint(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t = se(e, i.__wbindgen_malloc), n = l;
    c();
    try {
      i.__wbg_set_containerstartupoptions_entrypoint(this.__wbg_ptr, t, n);
    } catch (_) {
      s(_);
    }
  }
  set env(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_containerstartupoptions_env(this.__wbg_ptr, e);
    } catch (t) {
      s(t);
    }
  }
};
Symbol.dispose && (x.prototype[Symbol.dispose] = x.prototype.free);
var P = class {
  static {
    __name(this, "P");
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, he.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_intounderlyingbytesource_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  get autoAllocateChunkSize() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.intounderlyingbytesource_autoAllocateChunkSize(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e >>> 0;
  }
  cancel() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e = this.__destroy_into_raw();
    c();
    try {
      i.intounderlyingbytesource_cancel(e);
    } catch (t) {
      s(t);
    }
  }
  pull(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t;
    c();
    try {
      t = i.intounderlyingbytesource_pull(this.__wbg_ptr, e);
    } catch (n) {
      s(n);
    }
    return t;
  }
  start(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.intounderlyingbytesource_start(this.__wbg_ptr, e);
    } catch (t) {
      s(t);
    }
  }
  get type() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.intounderlyingbytesource_type(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return we[e];
  }
};
Symbol.dispose && (P.prototype[Symbol.dispose] = P.prototype.free);
var T = class {
  static {
    __name(this, "T");
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, pe.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_intounderlyingsink_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  abort(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t = this.__destroy_into_raw(), n;
    c();
    try {
      n = i.intounderlyingsink_abort(t, e);
    } catch (_) {
      s(_);
    }
    return n;
  }
  close() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e = this.__destroy_into_raw(), t;
    c();
    try {
      t = i.intounderlyingsink_close(e);
    } catch (n) {
      s(n);
    }
    return t;
  }
  write(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t;
    c();
    try {
      t = i.intounderlyingsink_write(this.__wbg_ptr, e);
    } catch (n) {
      s(n);
    }
    return t;
  }
};
Symbol.dispose && (T.prototype[Symbol.dispose] = T.prototype.free);
var z = class r {
  static {
    __name(this, "r");
  }
  static __wrap(e) {
    let t = Object.create(r.prototype);
    return t.__wbg_ptr = e, Object.defineProperty(t, "__wbg_inst", { value: o, writable: true }), Q.register(t, { ptr: e, instance: o }, t), t;
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, Q.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_intounderlyingsource_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  cancel() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e = this.__destroy_into_raw();
    c();
    try {
      i.intounderlyingsource_cancel(e);
    } catch (t) {
      s(t);
    }
  }
  pull(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t;
    c();
    try {
      t = i.intounderlyingsource_pull(this.__wbg_ptr, e);
    } catch (n) {
      s(n);
    }
    return t;
  }
};
Symbol.dispose && (z.prototype[Symbol.dispose] = z.prototype.free);
var v = class r2 {
  static {
    __name(this, "r");
  }
  static __wrap(e) {
    let t = Object.create(r2.prototype);
    return t.__wbg_ptr = e, Object.defineProperty(t, "__wbg_inst", { value: o, writable: true }), X.register(t, { ptr: e, instance: o }, t), t;
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, X.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_minifyconfig_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  get css() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_minifyconfig_css(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e !== 0;
  }
  get html() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_minifyconfig_html(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e !== 0;
  }
  get js() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_minifyconfig_js(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e !== 0;
  }
  set css(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_minifyconfig_css(this.__wbg_ptr, e);
    } catch (t) {
      s(t);
    }
  }
  set html(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_minifyconfig_html(this.__wbg_ptr, e);
    } catch (t) {
      s(t);
    }
  }
  set js(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_minifyconfig_js(this.__wbg_ptr, e);
    } catch (t) {
      s(t);
    }
  }
};
Symbol.dispose && (v.prototype[Symbol.dispose] = v.prototype.free);
var E = class {
  static {
    __name(this, "E");
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, Y.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_namespace_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  alarm() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.namespace_alarm(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e;
  }
  connect(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t;
    c();
    try {
      t = i.namespace_connect(this.__wbg_ptr, e);
    } catch (n) {
      s(n);
    }
    return t;
  }
  fetch(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let t;
    c();
    try {
      t = i.namespace_fetch(this.__wbg_ptr, e);
    } catch (n) {
      s(n);
    }
    return t;
  }
  constructor(e, t) {
    let n;
    c();
    try {
      n = i.namespace_new(e, t);
    } catch (_) {
      s(_);
    }
    return this.__wbg_ptr = n, Object.defineProperty(this, "__wbg_inst", { value: o, writable: true }), Y.register(this, { ptr: n, instance: o }, this), this;
  }
  webSocketClose(e, t, n, _) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let a = +t, f = +_, u = m(n, i.__wbindgen_malloc, i.__wbindgen_realloc), g = l, I;
    c();
    try {
      I = i.namespace_webSocketClose(this.__wbg_ptr, e, a, u, g, f);
    } catch (j) {
      s(j);
    }
    return I;
  }
  webSocketError(e, t) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let n;
    c();
    try {
      n = i.namespace_webSocketError(this.__wbg_ptr, e, t);
    } catch (_) {
      s(_);
    }
    return n;
  }
  webSocketMessage(e, t) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let n;
    c();
    try {
      n = i.namespace_webSocketMessage(this.__wbg_ptr, e, t);
    } catch (_) {
      s(_);
    }
    return n;
  }
};
Symbol.dispose && (E.prototype[Symbol.dispose] = E.prototype.free);
var R = class {
  static {
    __name(this, "R");
  }
  __destroy_into_raw() {
    let e = this.__wbg_ptr;
    return this.__wbg_ptr = 0, ye.unregister(this), e;
  }
  free() {
    let e = this.__destroy_into_raw();
    c();
    try {
      i.__wbg_r2range_free(e, 0);
    } catch (t) {
      s(t);
    }
  }
  get length() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_r2range_length(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e[0] === 0 ? void 0 : e[1];
  }
  get offset() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_r2range_offset(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e[0] === 0 ? void 0 : e[1];
  }
  get suffix() {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    let e;
    c();
    try {
      e = i.__wbg_get_r2range_suffix(this.__wbg_ptr);
    } catch (t) {
      s(t);
    }
    return e[0] === 0 ? void 0 : e[1];
  }
  set length(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_r2range_length(this.__wbg_ptr, !b(e), b(e) ? 0 : e);
    } catch (t) {
      s(t);
    }
  }
  set offset(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_r2range_offset(this.__wbg_ptr, !b(e), b(e) ? 0 : e);
    } catch (t) {
      s(t);
    }
  }
  set suffix(e) {
    if (this.__wbg_inst !== void 0 && this.__wbg_inst !== o) throw new Error("Invalid stale object from previous Wasm instance");
    c();
    try {
      i.__wbg_set_r2range_suffix(this.__wbg_ptr, !b(e), b(e) ? 0 : e);
    } catch (t) {
      s(t);
    }
  }
};
Symbol.dispose && (R.prototype[Symbol.dispose] = R.prototype.free);
function M() {
  o++, y = null, S = null, W = null, typeof numBytesDecoded < "u" && (numBytesDecoded = 0), typeof l < "u" && (l = 0), V = false, C = false, $ = new WebAssembly.Instance(ee, re()), i = $.exports, i.__wbindgen_start();
}
__name(M, "M");
function te() {
  let r3;
  c();
  try {
    r3 = i.__worker_init_state();
  } catch (e) {
    s(e);
  }
  return r3;
}
__name(te, "te");
function ne(r3, e, t) {
  let n;
  c();
  try {
    n = i.fetch(r3, e, t);
  } catch (_) {
    s(_);
  }
  return n;
}
__name(ne, "ne");
function re() {
  return { __proto__: null, "./index_bg.js": { __proto__: null, __wbg_Error_208446807d0d1e30: /* @__PURE__ */ __name(function(e, t) {
    return Error(d(e, t));
  }, "__wbg_Error_208446807d0d1e30"), __wbg_Number_ff192a72a0dcdf6d: /* @__PURE__ */ __name(function(e) {
    return Number(e);
  }, "__wbg_Number_ff192a72a0dcdf6d"), __wbg_String_8564e559799eccda: /* @__PURE__ */ __name(function(e, t) {
    let n = String(t), _ = m(n, i.__wbindgen_malloc, i.__wbindgen_realloc), a = l;
    w().setInt32((e >>> 0) + 4, a, true), w().setInt32((e >>> 0) + 0, _, true);
  }, "__wbg_String_8564e559799eccda"), __wbg___wbindgen_boolean_get_4f1baf9a00be3c74: /* @__PURE__ */ __name(function(e) {
    let t = e, n = typeof t == "boolean" ? t : void 0;
    return b(n) ? 16777215 : n ? 1 : 0;
  }, "__wbg___wbindgen_boolean_get_4f1baf9a00be3c74"), __wbg___wbindgen_debug_string_f249a2a76caa9a55: /* @__PURE__ */ __name(function(e, t) {
    let n = ie(t), _ = m(n, i.__wbindgen_malloc, i.__wbindgen_realloc), a = l;
    w().setInt32((e >>> 0) + 4, a, true), w().setInt32((e >>> 0) + 0, _, true);
  }, "__wbg___wbindgen_debug_string_f249a2a76caa9a55"), __wbg___wbindgen_in_3f58a9d3b3a7eed2: /* @__PURE__ */ __name(function(e, t) {
    return e in t;
  }, "__wbg___wbindgen_in_3f58a9d3b3a7eed2"), __wbg___wbindgen_is_function_741ff2bb612836f5: /* @__PURE__ */ __name(function(e) {
    return typeof e == "function";
  }, "__wbg___wbindgen_is_function_741ff2bb612836f5"), __wbg___wbindgen_is_null_c22311b1cc228e3a: /* @__PURE__ */ __name(function(e) {
    return e === null;
  }, "__wbg___wbindgen_is_null_c22311b1cc228e3a"), __wbg___wbindgen_is_null_or_undefined_fb96af93c75460ae: /* @__PURE__ */ __name(function(e) {
    return e == null;
  }, "__wbg___wbindgen_is_null_or_undefined_fb96af93c75460ae"), __wbg___wbindgen_is_object_8b968c3ab8e96595: /* @__PURE__ */ __name(function(e) {
    let t = e;
    return typeof t == "object" && t !== null;
  }, "__wbg___wbindgen_is_object_8b968c3ab8e96595"), __wbg___wbindgen_is_string_fc456fee5d3317de: /* @__PURE__ */ __name(function(e) {
    return typeof e == "string";
  }, "__wbg___wbindgen_is_string_fc456fee5d3317de"), __wbg___wbindgen_is_undefined_be5b34249ff1fc15: /* @__PURE__ */ __name(function(e) {
    return e === void 0;
  }, "__wbg___wbindgen_is_undefined_be5b34249ff1fc15"), __wbg___wbindgen_jsval_loose_eq_b2f214e2e4b30e36: /* @__PURE__ */ __name(function(e, t) {
    return e == t;
  }, "__wbg___wbindgen_jsval_loose_eq_b2f214e2e4b30e36"), __wbg___wbindgen_number_get_934b640d0889af78: /* @__PURE__ */ __name(function(e, t) {
    let n = t, _ = typeof n == "number" ? n : void 0;
    w().setFloat64((e >>> 0) + 8, b(_) ? 0 : _, true), w().setInt32((e >>> 0) + 0, !b(_), true);
  }, "__wbg___wbindgen_number_get_934b640d0889af78"), __wbg___wbindgen_reinit_2fe0d0b9c1cc3c21: /* @__PURE__ */ __name(function() {
    C = true;
  }, "__wbg___wbindgen_reinit_2fe0d0b9c1cc3c21"), __wbg___wbindgen_string_get_7ce8eee7fd327545: /* @__PURE__ */ __name(function(e, t) {
    let n = t, _ = typeof n == "string" ? n : void 0;
    var a = b(_) ? 0 : m(_, i.__wbindgen_malloc, i.__wbindgen_realloc), f = l;
    w().setInt32((e >>> 0) + 4, f, true), w().setInt32((e >>> 0) + 0, a, true);
  }, "__wbg___wbindgen_string_get_7ce8eee7fd327545"), __wbg___wbindgen_throw_4c88d8bf264fd984: /* @__PURE__ */ __name(function(e, t) {
    throw new WebAssembly.Exception(q, [new Error(d(e, t))]);
  }, "__wbg___wbindgen_throw_4c88d8bf264fd984"), __wbg__wbg_cb_unref_09736879a3f67559: /* @__PURE__ */ __name(function(e) {
    e._wbg_cb_unref();
  }, "__wbg__wbg_cb_unref_09736879a3f67559"), __wbg_acceptWebSocket_29076c97ea3e9d59: /* @__PURE__ */ __name(function(e, t, n, _) {
    var a = oe(n, _);
    i.__wbindgen_free(n, _ * 4, 4), e.acceptWebSocket(t, a);
  }, "__wbg_acceptWebSocket_29076c97ea3e9d59"), __wbg_append_ba9a4dc30a0323fd: /* @__PURE__ */ __name(function(e, t, n, _, a) {
    e.append(d(t, n), d(_, a));
  }, "__wbg_append_ba9a4dc30a0323fd"), __wbg_arrayBuffer_39a766224696fd9d: /* @__PURE__ */ __name(function(e) {
    return e.arrayBuffer();
  }, "__wbg_arrayBuffer_39a766224696fd9d"), __wbg_body_0da01a9a056907d8: /* @__PURE__ */ __name(function(e) {
    let t = e.body;
    return b(t) ? 0 : h(t);
  }, "__wbg_body_0da01a9a056907d8"), __wbg_body_b86ad4fe78cc379c: /* @__PURE__ */ __name(function(e) {
    let t = e.body;
    return b(t) ? 0 : h(t);
  }, "__wbg_body_b86ad4fe78cc379c"), __wbg_buffer_aca05a93c046db1a: /* @__PURE__ */ __name(function(e) {
    return e.buffer;
  }, "__wbg_buffer_aca05a93c046db1a"), __wbg_byobRequest_18280c78e462544c: /* @__PURE__ */ __name(function(e) {
    let t = e.byobRequest;
    return b(t) ? 0 : h(t);
  }, "__wbg_byobRequest_18280c78e462544c"), __wbg_byteLength_c5f3c188d5252e5b: /* @__PURE__ */ __name(function(e) {
    return e.byteLength;
  }, "__wbg_byteLength_c5f3c188d5252e5b"), __wbg_byteOffset_63cdc7b38f33a45e: /* @__PURE__ */ __name(function(e) {
    return e.byteOffset;
  }, "__wbg_byteOffset_63cdc7b38f33a45e"), __wbg_call_40b008ba32f73991: /* @__PURE__ */ __name(function(e, t) {
    return e.call(t);
  }, "__wbg_call_40b008ba32f73991"), __wbg_call_a410eb4b59ed5965: /* @__PURE__ */ __name(function(e, t, n) {
    return e.call(t, n);
  }, "__wbg_call_a410eb4b59ed5965"), __wbg_cancel_b195250778e9d8e7: /* @__PURE__ */ __name(function(e) {
    return e.cancel();
  }, "__wbg_cancel_b195250778e9d8e7"), __wbg_catch_fd4c7ea14fde9d83: /* @__PURE__ */ __name(function(e, t) {
    return e.catch(t);
  }, "__wbg_catch_fd4c7ea14fde9d83"), __wbg_cause_4cdda1b55a30b227: /* @__PURE__ */ __name(function(e) {
    return e.cause;
  }, "__wbg_cause_4cdda1b55a30b227"), __wbg_cf_3eef96d446a499c0: /* @__PURE__ */ __name(function(e) {
    let t = e.cf;
    return b(t) ? 0 : h(t);
  }, "__wbg_cf_3eef96d446a499c0"), __wbg_cf_e4bf1d08e9961dec: /* @__PURE__ */ __name(function(e) {
    let t = e.cf;
    return b(t) ? 0 : h(t);
  }, "__wbg_cf_e4bf1d08e9961dec"), __wbg_close_294d3f727cb7a844: /* @__PURE__ */ __name(function(e) {
    e.close();
  }, "__wbg_close_294d3f727cb7a844"), __wbg_close_297c4419d0990129: /* @__PURE__ */ __name(function(e, t) {
    e.close(t);
  }, "__wbg_close_297c4419d0990129"), __wbg_close_2a8b1ba07b9e0fee: /* @__PURE__ */ __name(function(e, t, n, _) {
    e.close(t, d(n, _));
  }, "__wbg_close_2a8b1ba07b9e0fee"), __wbg_close_5ee9c5fe4e8754a4: /* @__PURE__ */ __name(function(e) {
    e.close();
  }, "__wbg_close_5ee9c5fe4e8754a4"), __wbg_close_bf94aa7e38b9a94b: /* @__PURE__ */ __name(function(e) {
    e.close();
  }, "__wbg_close_bf94aa7e38b9a94b"), __wbg_constructor_76ad3e2c50d259de: /* @__PURE__ */ __name(function(e) {
    return e.constructor;
  }, "__wbg_constructor_76ad3e2c50d259de"), __wbg_debug_29e5044b8c3730bb: /* @__PURE__ */ __name(function(e) {
    console.debug(e);
  }, "__wbg_debug_29e5044b8c3730bb"), __wbg_deserializeAttachment_b0638e89b27e2a83: /* @__PURE__ */ __name(function(e) {
    return e.deserializeAttachment();
  }, "__wbg_deserializeAttachment_b0638e89b27e2a83"), __wbg_done_57e08d0be6e30c02: /* @__PURE__ */ __name(function(e) {
    return e.done;
  }, "__wbg_done_57e08d0be6e30c02"), __wbg_encodeURIComponent_e0d7769acee2dcb5: /* @__PURE__ */ __name(function(e, t) {
    return encodeURIComponent(d(e, t));
  }, "__wbg_encodeURIComponent_e0d7769acee2dcb5"), __wbg_enqueue_c11626eae1c54509: /* @__PURE__ */ __name(function(e, t) {
    e.enqueue(t);
  }, "__wbg_enqueue_c11626eae1c54509"), __wbg_entries_fb0b3ba27a6e0bf7: /* @__PURE__ */ __name(function(e) {
    return e.entries();
  }, "__wbg_entries_fb0b3ba27a6e0bf7"), __wbg_error_9b95f63d905893d2: /* @__PURE__ */ __name(function(e, t) {
    console.error(e, t);
  }, "__wbg_error_9b95f63d905893d2"), __wbg_error_d1fc0193610e0e39: /* @__PURE__ */ __name(function(e) {
    console.error(e);
  }, "__wbg_error_d1fc0193610e0e39"), __wbg_exec_85b624bc72d8a6f2: /* @__PURE__ */ __name(function(e, t, n, _) {
    return e.exec(d(t, n), ..._);
  }, "__wbg_exec_85b624bc72d8a6f2"), __wbg_fetch_2350c0d8af7f9fc2: /* @__PURE__ */ __name(function(e, t, n) {
    return e.fetch(d(t, n));
  }, "__wbg_fetch_2350c0d8af7f9fc2"), __wbg_fetch_58e62838507dad34: /* @__PURE__ */ __name(function(e, t) {
    return e.fetch(t);
  }, "__wbg_fetch_58e62838507dad34"), __wbg_from_eac91875c8a5ffa4: /* @__PURE__ */ __name(function(e) {
    return Array.from(e);
  }, "__wbg_from_eac91875c8a5ffa4"), __wbg_getAlarm_276dab0d75e33652: /* @__PURE__ */ __name(function(e, t) {
    return e.getAlarm(t);
  }, "__wbg_getAlarm_276dab0d75e33652"), __wbg_getReader_3b3096cf504fce5e: /* @__PURE__ */ __name(function(e) {
    return e.getReader();
  }, "__wbg_getReader_3b3096cf504fce5e"), __wbg_getTime_edc91481cbc4cd78: /* @__PURE__ */ __name(function(e) {
    return e.getTime();
  }, "__wbg_getTime_edc91481cbc4cd78"), __wbg_getWebSockets_557696c97fc4ec99: /* @__PURE__ */ __name(function(e, t) {
    let n = t.getWebSockets(), _ = se(n, i.__wbindgen_malloc), a = l;
    w().setInt32((e >>> 0) + 4, a, true), w().setInt32((e >>> 0) + 0, _, true);
  }, "__wbg_getWebSockets_557696c97fc4ec99"), __wbg_get_0ae635d02d232017: /* @__PURE__ */ __name(function(e, t) {
    let n = Reflect.get(e, t);
    return b(n) ? 0 : h(n);
  }, "__wbg_get_0ae635d02d232017"), __wbg_get_2080c49015e35254: /* @__PURE__ */ __name(function(e, t) {
    return Reflect.get(e, t);
  }, "__wbg_get_2080c49015e35254"), __wbg_get_4d87e704eb410caa: /* @__PURE__ */ __name(function(e, t) {
    return e.get(t);
  }, "__wbg_get_4d87e704eb410caa"), __wbg_get_556f1c9a5c587e8c: /* @__PURE__ */ __name(function(e, t, n, _) {
    let a = t.get(d(n, _));
    var f = b(a) ? 0 : m(a, i.__wbindgen_malloc, i.__wbindgen_realloc), u = l;
    w().setInt32((e >>> 0) + 4, u, true), w().setInt32((e >>> 0) + 0, f, true);
  }, "__wbg_get_556f1c9a5c587e8c"), __wbg_get_635eea311fa1a291: /* @__PURE__ */ __name(function(e, t) {
    return Reflect.get(e, t);
  }, "__wbg_get_635eea311fa1a291"), __wbg_get_bb8b6b35041e00c9: /* @__PURE__ */ __name(function(e, t) {
    return Reflect.get(e, t >>> 0);
  }, "__wbg_get_bb8b6b35041e00c9"), __wbg_get_d7176cfb76d71114: /* @__PURE__ */ __name(function(e, t) {
    return e[t >>> 0];
  }, "__wbg_get_d7176cfb76d71114"), __wbg_get_done_3bf2b4a34e149301: /* @__PURE__ */ __name(function(e) {
    let t = e.done;
    return b(t) ? 16777215 : t ? 1 : 0;
  }, "__wbg_get_done_3bf2b4a34e149301"), __wbg_get_unchecked_e6325ad374eff861: /* @__PURE__ */ __name(function(e, t) {
    return e[t >>> 0];
  }, "__wbg_get_unchecked_e6325ad374eff861"), __wbg_get_value_9454480da7066d61: /* @__PURE__ */ __name(function(e) {
    return e.value;
  }, "__wbg_get_value_9454480da7066d61"), __wbg_get_with_ref_key_fc601247060b7204: /* @__PURE__ */ __name(function(e, t) {
    return e[t];
  }, "__wbg_get_with_ref_key_fc601247060b7204"), __wbg_headers_5fc0106c076eb731: /* @__PURE__ */ __name(function(e) {
    return e.headers;
  }, "__wbg_headers_5fc0106c076eb731"), __wbg_headers_9ef80dd266706f48: /* @__PURE__ */ __name(function(e) {
    return e.headers;
  }, "__wbg_headers_9ef80dd266706f48"), __wbg_idFromName_8e1943d73c953e77: /* @__PURE__ */ __name(function(e, t, n) {
    return e.idFromName(d(t, n));
  }, "__wbg_idFromName_8e1943d73c953e77"), __wbg_instanceId_65a51bedfd10160a: /* @__PURE__ */ __name(function(e) {
    return e.instanceId;
  }, "__wbg_instanceId_65a51bedfd10160a"), __wbg_instanceof_ArrayBuffer_12cdaa4161423e6b: /* @__PURE__ */ __name(function(e) {
    let t;
    try {
      t = e instanceof ArrayBuffer;
    } catch {
      t = false;
    }
    return t;
  }, "__wbg_instanceof_ArrayBuffer_12cdaa4161423e6b"), __wbg_instanceof_Error_74e3cca0c4a69161: /* @__PURE__ */ __name(function(e) {
    let t;
    try {
      t = e instanceof Error;
    } catch {
      t = false;
    }
    return t;
  }, "__wbg_instanceof_Error_74e3cca0c4a69161"), __wbg_instanceof_ReadableStream_ac28304925ec0f96: /* @__PURE__ */ __name(function(e) {
    let t;
    try {
      t = e instanceof ReadableStream;
    } catch {
      t = false;
    }
    return t;
  }, "__wbg_instanceof_ReadableStream_ac28304925ec0f96"), __wbg_instanceof_Response_5b0b4f7f1daeae51: /* @__PURE__ */ __name(function(e) {
    let t;
    try {
      t = e instanceof Response;
    } catch {
      t = false;
    }
    return t;
  }, "__wbg_instanceof_Response_5b0b4f7f1daeae51"), __wbg_instanceof_Uint8Array_d7aeb0dcb3108fea: /* @__PURE__ */ __name(function(e) {
    let t;
    try {
      t = e instanceof Uint8Array;
    } catch {
      t = false;
    }
    return t;
  }, "__wbg_instanceof_Uint8Array_d7aeb0dcb3108fea"), __wbg_isArray_bcf1376d0d732d08: /* @__PURE__ */ __name(function(e) {
    return Array.isArray(e);
  }, "__wbg_isArray_bcf1376d0d732d08"), __wbg_isSafeInteger_1a35ba4d31e71d38: /* @__PURE__ */ __name(function(e) {
    return Number.isSafeInteger(e);
  }, "__wbg_isSafeInteger_1a35ba4d31e71d38"), __wbg_iterator_e4c5e8f68ada7b58: /* @__PURE__ */ __name(function() {
    return Symbol.iterator;
  }, "__wbg_iterator_e4c5e8f68ada7b58"), __wbg_keys_296846770c088f87: /* @__PURE__ */ __name(function(e) {
    return e.keys();
  }, "__wbg_keys_296846770c088f87"), __wbg_length_186163212ffe79c3: /* @__PURE__ */ __name(function(e) {
    return e.length;
  }, "__wbg_length_186163212ffe79c3"), __wbg_length_b03a0fabb109b1e9: /* @__PURE__ */ __name(function(e) {
    return e.length;
  }, "__wbg_length_b03a0fabb109b1e9"), __wbg_message_43d8c8f1d543a349: /* @__PURE__ */ __name(function(e) {
    return e.message;
  }, "__wbg_message_43d8c8f1d543a349"), __wbg_method_3d406ebab4dd9853: /* @__PURE__ */ __name(function(e, t) {
    let n = t.method, _ = m(n, i.__wbindgen_malloc, i.__wbindgen_realloc), a = l;
    w().setInt32((e >>> 0) + 4, a, true), w().setInt32((e >>> 0) + 0, _, true);
  }, "__wbg_method_3d406ebab4dd9853"), __wbg_minifyconfig_new: /* @__PURE__ */ __name(function(e) {
    return v.__wrap(e);
  }, "__wbg_minifyconfig_new"), __wbg_name_d1fa514fdca6a975: /* @__PURE__ */ __name(function(e) {
    return e.name;
  }, "__wbg_name_d1fa514fdca6a975"), __wbg_name_fd11f69c917c5670: /* @__PURE__ */ __name(function(e) {
    return e.name;
  }, "__wbg_name_fd11f69c917c5670"), __wbg_new_0_36d738a0c8cfac43: /* @__PURE__ */ __name(function() {
    return /* @__PURE__ */ new Date();
  }, "__wbg_new_0_36d738a0c8cfac43"), __wbg_new_13de428334042d26: /* @__PURE__ */ __name(function(e) {
    return new Uint8Array(e);
  }, "__wbg_new_13de428334042d26"), __wbg_new_277c27c26f94cbc2: /* @__PURE__ */ __name(function() {
    return new Headers();
  }, "__wbg_new_277c27c26f94cbc2"), __wbg_new_37eb45aaf5eeb820: /* @__PURE__ */ __name(function() {
    return new Array();
  }, "__wbg_new_37eb45aaf5eeb820"), __wbg_new_3e95cd7386bb9a6c: /* @__PURE__ */ __name(function(e) {
    return new Date(e);
  }, "__wbg_new_3e95cd7386bb9a6c"), __wbg_new_7075786089b89c5e: /* @__PURE__ */ __name(function() {
    return /* @__PURE__ */ new Map();
  }, "__wbg_new_7075786089b89c5e"), __wbg_new_787b9fb330d55d78: /* @__PURE__ */ __name(function(e, t) {
    return new Error(d(e, t));
  }, "__wbg_new_787b9fb330d55d78"), __wbg_new_cd4348290afae586: /* @__PURE__ */ __name(function() {
    return new Object();
  }, "__wbg_new_cd4348290afae586"), __wbg_new_e119023fca43b021: /* @__PURE__ */ __name(function() {
    return new WebSocketPair();
  }, "__wbg_new_e119023fca43b021"), __wbg_new_from_slice_b8daf545a41c6aa0: /* @__PURE__ */ __name(function(e, t) {
    return new Uint8Array(L(e, t));
  }, "__wbg_new_from_slice_b8daf545a41c6aa0"), __wbg_new_typed_e09da9dae6ee5935: /* @__PURE__ */ __name(function(e, t) {
    try {
      var n = { a: e, b: t }, _ = /* @__PURE__ */ __name((f, u) => {
        let g = n.a;
        n.a = 0;
        try {
          return ue(g, n.b, f, u);
        } finally {
          n.a = g;
        }
      }, "_");
      return new Promise(_);
    } finally {
      n.a = 0;
    }
  }, "__wbg_new_typed_e09da9dae6ee5935"), __wbg_new_with_byte_offset_and_length_3cd32055a417f095: /* @__PURE__ */ __name(function(e, t, n) {
    return new Uint8Array(e, t >>> 0, n >>> 0);
  }, "__wbg_new_with_byte_offset_and_length_3cd32055a417f095"), __wbg_new_with_into_underlying_source_ba3944e7f4c9d0c3: /* @__PURE__ */ __name(function(e, t) {
    return new ReadableStream(z.__wrap(e), t);
  }, "__wbg_new_with_into_underlying_source_ba3944e7f4c9d0c3"), __wbg_new_with_length_01b143a7e5dd5a3e: /* @__PURE__ */ __name(function(e) {
    return new Uint8Array(e >>> 0);
  }, "__wbg_new_with_length_01b143a7e5dd5a3e"), __wbg_new_with_opt_buffer_source_and_init_efb63b64b37a12c7: /* @__PURE__ */ __name(function(e, t) {
    return new Response(e, t);
  }, "__wbg_new_with_opt_buffer_source_and_init_efb63b64b37a12c7"), __wbg_new_with_opt_readable_stream_and_init_383c64eccf9e9cc7: /* @__PURE__ */ __name(function(e, t) {
    return new Response(e, t);
  }, "__wbg_new_with_opt_readable_stream_and_init_383c64eccf9e9cc7"), __wbg_new_with_opt_str_and_init_6456bed24baae6fc: /* @__PURE__ */ __name(function(e, t, n) {
    return new Response(e === 0 ? void 0 : d(e, t), n);
  }, "__wbg_new_with_opt_str_and_init_6456bed24baae6fc"), __wbg_new_with_str_and_init_d9f6b5611184e16b: /* @__PURE__ */ __name(function(e, t, n) {
    return new Request(d(e, t), n);
  }, "__wbg_new_with_str_and_init_d9f6b5611184e16b"), __wbg_next_178c1651c11432b3: /* @__PURE__ */ __name(function(e) {
    return e.next;
  }, "__wbg_next_178c1651c11432b3"), __wbg_next_af5ac6a08bb0a717: /* @__PURE__ */ __name(function(e) {
    return e.next();
  }, "__wbg_next_af5ac6a08bb0a717"), __wbg_now_463ac581d2fc7ea3: /* @__PURE__ */ __name(function() {
    return Date.now();
  }, "__wbg_now_463ac581d2fc7ea3"), __wbg_prototypesetcall_13162965d1fe7aa3: /* @__PURE__ */ __name(function(e, t, n) {
    Uint8Array.prototype.set.call(L(e, t), n);
  }, "__wbg_prototypesetcall_13162965d1fe7aa3"), __wbg_push_c9f4893fc209f768: /* @__PURE__ */ __name(function(e, t) {
    return e.push(t);
  }, "__wbg_push_c9f4893fc209f768"), __wbg_queueMicrotask_1e8503a8a690f0a3: /* @__PURE__ */ __name(function(e) {
    return e.queueMicrotask;
  }, "__wbg_queueMicrotask_1e8503a8a690f0a3"), __wbg_queueMicrotask_4a1a4d8dd332373b: /* @__PURE__ */ __name(function(e) {
    queueMicrotask(e);
  }, "__wbg_queueMicrotask_4a1a4d8dd332373b"), __wbg_raw_54003dd671e09bed: /* @__PURE__ */ __name(function(e) {
    return e.raw();
  }, "__wbg_raw_54003dd671e09bed"), __wbg_read_e3bea75dace70752: /* @__PURE__ */ __name(function(e) {
    return e.read();
  }, "__wbg_read_e3bea75dace70752"), __wbg_readable_11d72b62fcfdd1ec: /* @__PURE__ */ __name(function(e) {
    return e.readable;
  }, "__wbg_readable_11d72b62fcfdd1ec"), __wbg_releaseLock_eddf1401c763f0b9: /* @__PURE__ */ __name(function(e) {
    e.releaseLock();
  }, "__wbg_releaseLock_eddf1401c763f0b9"), __wbg_resolve_dbf78ab4942478b0: /* @__PURE__ */ __name(function(e) {
    return Promise.resolve(e);
  }, "__wbg_resolve_dbf78ab4942478b0"), __wbg_respond_d97c023ee981d1f5: /* @__PURE__ */ __name(function(e, t) {
    e.respond(t >>> 0);
  }, "__wbg_respond_d97c023ee981d1f5"), __wbg_send_bb2492de0cbf1d99: /* @__PURE__ */ __name(function(e, t) {
    e.send(t);
  }, "__wbg_send_bb2492de0cbf1d99"), __wbg_serializeAttachment_b3838d362dd24b64: /* @__PURE__ */ __name(function(e, t) {
    e.serializeAttachment(t);
  }, "__wbg_serializeAttachment_b3838d362dd24b64"), __wbg_setAlarm_039d09296f34bacd: /* @__PURE__ */ __name(function(e, t, n) {
    return e.setAlarm(t, n);
  }, "__wbg_setAlarm_039d09296f34bacd"), __wbg_set_2793479888329cb6: /* @__PURE__ */ __name(function(e, t, n) {
    return Reflect.set(e, t, n);
  }, "__wbg_set_2793479888329cb6"), __wbg_set_8282f7e0d2d01336: /* @__PURE__ */ __name(function(e, t, n) {
    return e.set(t, n);
  }, "__wbg_set_8282f7e0d2d01336"), __wbg_set_bcb0ec2400cfa22e: /* @__PURE__ */ __name(function(e, t, n, _, a) {
    e.set(d(t, n), d(_, a));
  }, "__wbg_set_bcb0ec2400cfa22e"), __wbg_set_body_877d5251e78ca815: /* @__PURE__ */ __name(function(e, t) {
    e.body = t;
  }, "__wbg_set_body_877d5251e78ca815"), __wbg_set_cache_7a23201e29cbd632: /* @__PURE__ */ __name(function(e, t) {
    e.cache = de[t];
  }, "__wbg_set_cache_7a23201e29cbd632"), __wbg_set_criticalError_c30445da7038dbf2: /* @__PURE__ */ __name(function(e, t) {
    e.criticalError = t !== 0;
  }, "__wbg_set_criticalError_c30445da7038dbf2"), __wbg_set_d2d33b52458e984a: /* @__PURE__ */ __name(function(e, t, n) {
    e[t >>> 0] = n;
  }, "__wbg_set_d2d33b52458e984a"), __wbg_set_e4b9a833d288759a: /* @__PURE__ */ __name(function(e, t, n) {
    e[t] = n;
  }, "__wbg_set_e4b9a833d288759a"), __wbg_set_feb3714f475485ba: /* @__PURE__ */ __name(function(e, t, n) {
    e.set(L(t, n));
  }, "__wbg_set_feb3714f475485ba"), __wbg_set_headers_07f10dbe49bc0e77: /* @__PURE__ */ __name(function(e, t) {
    e.headers = t;
  }, "__wbg_set_headers_07f10dbe49bc0e77"), __wbg_set_headers_6d75a7df4eb22716: /* @__PURE__ */ __name(function(e, t) {
    e.headers = t;
  }, "__wbg_set_headers_6d75a7df4eb22716"), __wbg_set_high_water_mark_2c2355a75a627679: /* @__PURE__ */ __name(function(e, t) {
    e.highWaterMark = t;
  }, "__wbg_set_high_water_mark_2c2355a75a627679"), __wbg_set_instanceId_6f5f77d81e249b49: /* @__PURE__ */ __name(function(e, t) {
    e.instanceId = t >>> 0;
  }, "__wbg_set_instanceId_6f5f77d81e249b49"), __wbg_set_method_639e69af35614d36: /* @__PURE__ */ __name(function(e, t, n) {
    e.method = d(t, n);
  }, "__wbg_set_method_639e69af35614d36"), __wbg_set_redirect_a95a432ab7d10765: /* @__PURE__ */ __name(function(e, t) {
    e.redirect = ge[t];
  }, "__wbg_set_redirect_a95a432ab7d10765"), __wbg_set_status_bd9dc81d1c17b108: /* @__PURE__ */ __name(function(e, t) {
    e.status = t;
  }, "__wbg_set_status_bd9dc81d1c17b108"), __wbg_sql_cabda3440c70072f: /* @__PURE__ */ __name(function(e) {
    return e.sql;
  }, "__wbg_sql_cabda3440c70072f"), __wbg_static_accessor_GLOBAL_THIS_003ee833af9699fc: /* @__PURE__ */ __name(function() {
    let e = typeof globalThis > "u" ? void 0 : globalThis;
    return b(e) ? 0 : h(e);
  }, "__wbg_static_accessor_GLOBAL_THIS_003ee833af9699fc"), __wbg_static_accessor_GLOBAL_e4293fb22cbe77da: /* @__PURE__ */ __name(function() {
    let e = typeof global > "u" ? void 0 : global;
    return b(e) ? 0 : h(e);
  }, "__wbg_static_accessor_GLOBAL_e4293fb22cbe77da"), __wbg_static_accessor_INIT_STATE_b2269150d11f01e0: /* @__PURE__ */ __name(function() {
    return K;
  }, "__wbg_static_accessor_INIT_STATE_b2269150d11f01e0"), __wbg_static_accessor_SELF_53bb20457401453d: /* @__PURE__ */ __name(function() {
    let e = typeof self > "u" ? void 0 : self;
    return b(e) ? 0 : h(e);
  }, "__wbg_static_accessor_SELF_53bb20457401453d"), __wbg_static_accessor_WINDOW_b5e0810bfecb7feb: /* @__PURE__ */ __name(function() {
    let e = typeof window > "u" ? void 0 : window;
    return b(e) ? 0 : h(e);
  }, "__wbg_static_accessor_WINDOW_b5e0810bfecb7feb"), __wbg_status_cb85b6c8d1769fa1: /* @__PURE__ */ __name(function(e) {
    return e.status;
  }, "__wbg_status_cb85b6c8d1769fa1"), __wbg_storage_00d86055b2dc3100: /* @__PURE__ */ __name(function(e) {
    return e.storage;
  }, "__wbg_storage_00d86055b2dc3100"), __wbg_then_656f253a5dd7d8ea: /* @__PURE__ */ __name(function(e, t, n) {
    return e.then(t, n);
  }, "__wbg_then_656f253a5dd7d8ea"), __wbg_then_e3f7f2d365708be8: /* @__PURE__ */ __name(function(e, t) {
    return e.then(t);
  }, "__wbg_then_e3f7f2d365708be8"), __wbg_url_1be993c7b186415b: /* @__PURE__ */ __name(function(e, t) {
    let n = t.url, _ = m(n, i.__wbindgen_malloc, i.__wbindgen_realloc), a = l;
    w().setInt32((e >>> 0) + 4, a, true), w().setInt32((e >>> 0) + 0, _, true);
  }, "__wbg_url_1be993c7b186415b"), __wbg_value_e0f328965e184931: /* @__PURE__ */ __name(function(e) {
    return e.value;
  }, "__wbg_value_e0f328965e184931"), __wbg_view_3b708d3bdaf3fc96: /* @__PURE__ */ __name(function(e) {
    let t = e.view;
    return b(t) ? 0 : h(t);
  }, "__wbg_view_3b708d3bdaf3fc96"), __wbg_webSocket_71791e807603b1e4: /* @__PURE__ */ __name(function(e) {
    let t = e.webSocket;
    return b(t) ? 0 : h(t);
  }, "__wbg_webSocket_71791e807603b1e4"), __wbg_writable_1924ab50750acb0f: /* @__PURE__ */ __name(function(e) {
    return e.writable;
  }, "__wbg_writable_1924ab50750acb0f"), __wbindgen_generic_0000000000000001: /* @__PURE__ */ __name(function(e, t) {
    return N(e, t, fe);
  }, "__wbindgen_generic_0000000000000001"), __wbindgen_generic_0000000000000002: /* @__PURE__ */ __name(function(e, t) {
    return N(e, t, be);
  }, "__wbindgen_generic_0000000000000002"), __wbindgen_generic_0000000000000003: /* @__PURE__ */ __name(function(e, t) {
    return N(e, t, ae);
  }, "__wbindgen_generic_0000000000000003"), __wbindgen_generic_0000000000000004: /* @__PURE__ */ __name(function(e) {
    return e;
  }, "__wbindgen_generic_0000000000000004"), __wbindgen_generic_0000000000000005: /* @__PURE__ */ __name(function(e, t) {
    return d(e, t);
  }, "__wbindgen_generic_0000000000000005"), __wbindgen_generic_0000000000000006: /* @__PURE__ */ __name(function(e) {
    return BigInt.asUintN(64, e);
  }, "__wbindgen_generic_0000000000000006"), __wbindgen_init_externref_table: /* @__PURE__ */ __name(function() {
    let e = i.__wbindgen_externrefs;
    e.set(0, void 0), e.set(1024, void 0), e.set(1025, null), e.set(1026, true), e.set(1027, false);
  }, "__wbindgen_init_externref_table"), __wbindgen_jstag: WebAssembly.JSTag, __wbindgen_rethrow_critical: /* @__PURE__ */ __name(function(e) {
    throw new Error("Critical error", { cause: e });
  }, "__wbindgen_rethrow_critical") } };
}
__name(re, "re");
var q = new WebAssembly.Tag({ parameters: ["externref"] });
var D;
var V = false;
function _e() {
  V = true;
  try {
    let r3 = J()[i.__abort_handler.value / 4];
    r3 && i.__wbindgen_export.get(r3)();
  } catch {
  }
}
__name(_e, "_e");
function s(r3) {
  throw r3 instanceof WebAssembly.Exception && r3.is(q) ? r3.getArg(q, 0) : (J()[D] = 1, _e(), r3);
}
__name(s, "s");
function c() {
  if (D ??= i.__instance_terminated.value / 4, J()[D]) {
    if (V || _e(), C) {
      M();
      return;
    }
    throw new Error("Module terminated");
  } else C && M();
}
__name(c, "c");
function ae(r3, e) {
  let t;
  c();
  try {
    t = i.wasm_bindgen__convert__closures_____invoke__hb11df3b8e21b2266(r3, e);
  } catch (n) {
    s(n);
  }
  if (t[2]) throw B(t[1]);
  return B(t[0]);
}
__name(ae, "ae");
function fe(r3, e, t) {
  c();
  try {
    i.wasm_bindgen__convert__closures_____invoke__heedccd12c069322b(r3, e, t);
  } catch (n) {
    s(n);
  }
}
__name(fe, "fe");
function be(r3, e, t) {
  let n;
  c();
  try {
    n = i.wasm_bindgen__convert__closures_____invoke__h8c8861eff89ca2bc(r3, e, t);
  } catch (_) {
    s(_);
  }
  if (n[1]) throw B(n[0]);
}
__name(be, "be");
function ue(r3, e, t, n) {
  c();
  try {
    i.wasm_bindgen__convert__closures_____invoke__h242bbcebea228217(r3, e, t, n);
  } catch (_) {
    s(_);
  }
}
__name(ue, "ue");
var we = ["bytes"];
var de = ["default", "no-store", "reload", "no-cache", "force-cache", "only-if-cached"];
var ge = ["follow", "error", "manual"];
var o = 0;
var le = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_containerstartupoptions_free(r3, 1);
});
var he = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_intounderlyingbytesource_free(r3, 1);
});
var pe = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_intounderlyingsink_free(r3, 1);
});
var Q = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_intounderlyingsource_free(r3, 1);
});
var X = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_minifyconfig_free(r3, 1);
});
var Y = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_namespace_free(r3, 1);
});
var ye = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry(({ ptr: r3, instance: e }) => {
  e === o && i.__wbg_r2range_free(r3, 1);
});
function h(r3) {
  let e = i.__externref_table_alloc();
  return i.__wbindgen_externrefs.set(e, r3), e;
}
__name(h, "h");
var Z = typeof FinalizationRegistry > "u" ? { register: /* @__PURE__ */ __name(() => {
}, "register"), unregister: /* @__PURE__ */ __name(() => {
}, "unregister") } : new FinalizationRegistry((r3) => {
  r3.instance === o && i.__wbindgen_destroy_closure(r3.a, r3.b);
});
function ie(r3) {
  switch (typeof r3) {
    case "number":
    case "boolean":
    case "undefined":
      return `${r3}`;
    case "string":
      return JSON.stringify(r3);
    case "bigint":
      return `${r3}n`;
    case "symbol":
      return r3.description !== void 0 ? `Symbol(${r3.description})` : "Symbol";
    case "function":
      return typeof r3.name == "string" && r3.name !== "" ? `Function(${r3.name})` : "Function";
    case "object": {
      if (r3 === null) return "null";
      if (Array.isArray(r3)) return "[" + Array.from(r3, ie).join(", ") + "]";
      if (r3 instanceof Error) return `${r3.name}: ${r3.message}
${r3.stack}`;
      let e = toString.call(r3), t = /\[object ([^\]]+)\]/.exec(e)?.[1];
      if (t === void 0) return e;
      if (t === "Object") try {
        return "Object(" + JSON.stringify(r3) + ")";
      } catch {
        return "Object";
      }
      return t;
    }
  }
}
__name(ie, "ie");
function oe(r3, e) {
  r3 = r3 >>> 0;
  let t = w(), n = [];
  for (let _ = r3; _ < r3 + 4 * e; _ += 4) n.push(i.__wbindgen_externrefs.get(t.getUint32(_, true)));
  return i.__externref_drop_slice(r3, e), n;
}
__name(oe, "oe");
function L(r3, e) {
  return r3 = r3 >>> 0, k().subarray(r3 / 1, r3 / 1 + e);
}
__name(L, "L");
var y = null;
function w() {
  return (y === null || y.buffer.detached === true || y.buffer.detached === void 0 && y.buffer !== i.memory.buffer) && (y = new DataView(i.memory.buffer)), y;
}
__name(w, "w");
var S = null;
function J() {
  return (S === null || S.byteLength === 0) && (S = new Int32Array(i.memory.buffer)), S;
}
__name(J, "J");
function d(r3, e) {
  return r3 = r3 >>> 0, me(k().subarray(r3, r3 + e));
}
__name(d, "d");
var W = null;
function k() {
  return (W === null || W.byteLength === 0) && (W = new Uint8Array(i.memory.buffer)), W;
}
__name(k, "k");
function b(r3) {
  return r3 == null;
}
__name(b, "b");
function N(r3, e, t) {
  let n = { a: r3, b: e, cnt: 1, instance: o }, _ = /* @__PURE__ */ __name((...a) => {
    if (n.instance !== o) throw new Error("Cannot invoke closure from previous WASM instance");
    n.cnt++;
    let f = n.a;
    n.a = 0;
    try {
      return t(f, n.b, ...a);
    } finally {
      n.a = f, _._wbg_cb_unref();
    }
  }, "_");
  return _._wbg_cb_unref = () => {
    --n.cnt === 0 && (i.__wbindgen_destroy_closure(n.a, n.b), n.a = 0, Z.unregister(n));
  }, Z.register(_, n, n), _;
}
__name(N, "N");
function se(r3, e) {
  let t = e(r3.length * 4, 4) >>> 0;
  for (let n = 0; n < r3.length; n++) {
    let _ = h(r3[n]);
    w().setUint32(t + 4 * n, _, true);
  }
  return l = r3.length, t;
}
__name(se, "se");
function m(r3, e, t) {
  if (t === void 0) {
    let u = A.encode(r3), g = e(u.length, 1) >>> 0;
    return k().subarray(g, g + u.length).set(u), l = u.length, g;
  }
  let n = r3.length, _ = e(n, 1) >>> 0, a = k(), f = 0;
  for (; f < n; f++) {
    let u = r3.charCodeAt(f);
    if (u > 127) break;
    a[_ + f] = u;
  }
  if (f !== n) {
    f !== 0 && (r3 = r3.slice(f)), _ = t(_, n, n = f + r3.length * 3, 1) >>> 0;
    let u = k().subarray(_ + f, _ + n), g = A.encodeInto(r3, u);
    f += g.written, _ = t(_, n, f, 1) >>> 0;
  }
  return l = f, _;
}
__name(m, "m");
var C = false;
function B(r3) {
  let e = i.__wbindgen_externrefs.get(r3);
  return i.__externref_table_dealloc(r3), e;
}
__name(B, "B");
var ce = new TextDecoder("utf-8", { ignoreBOM: true });
ce.decode();
function me(r3) {
  return ce.decode(r3);
}
__name(me, "me");
var A = new TextEncoder();
"encodeInto" in A || (A.encodeInto = function(r3, e) {
  let t = A.encode(r3);
  return e.set(t), { read: r3.length, written: t.length };
});
var l = 0;
var $ = new WebAssembly.Instance(ee, re());
var i = $.exports;
i.__wbindgen_start();
Error.stackTraceLimit = 100;
var p = te();
function H() {
  p.criticalError && (console.log("Reinitializing Wasm application"), M(), p.criticalError = false, p.instanceId++);
}
__name(H, "H");
addEventListener("error", (r3) => {
  G(r3.error);
});
function G(r3) {
  r3 instanceof WebAssembly.RuntimeError && (console.error("Critical", r3), p.criticalError = true);
}
__name(G, "G");
var U = class extends Ie {
  static {
    __name(this, "U");
  }
};
U.prototype.fetch = function(e) {
  return ne.call(this, e, this.env, this.ctx);
};
var xe = { set: /* @__PURE__ */ __name((r3, e, t, n) => Reflect.set(r3.instance, e, t, n), "set"), has: /* @__PURE__ */ __name((r3, e) => Reflect.has(r3.instance, e), "has"), deleteProperty: /* @__PURE__ */ __name((r3, e) => Reflect.deleteProperty(r3.instance, e), "deleteProperty"), apply: /* @__PURE__ */ __name((r3, e, t) => Reflect.apply(r3.instance, e, t), "apply"), construct: /* @__PURE__ */ __name((r3, e, t) => Reflect.construct(r3.instance, e, t), "construct"), getPrototypeOf: /* @__PURE__ */ __name((r3) => Reflect.getPrototypeOf(r3.instance), "getPrototypeOf"), setPrototypeOf: /* @__PURE__ */ __name((r3, e) => Reflect.setPrototypeOf(r3.instance, e), "setPrototypeOf"), isExtensible: /* @__PURE__ */ __name((r3) => Reflect.isExtensible(r3.instance), "isExtensible"), preventExtensions: /* @__PURE__ */ __name((r3) => Reflect.preventExtensions(r3.instance), "preventExtensions"), getOwnPropertyDescriptor: /* @__PURE__ */ __name((r3, e) => Reflect.getOwnPropertyDescriptor(r3.instance, e), "getOwnPropertyDescriptor"), defineProperty: /* @__PURE__ */ __name((r3, e, t) => Reflect.defineProperty(r3.instance, e, t), "defineProperty"), ownKeys: /* @__PURE__ */ __name((r3) => Reflect.ownKeys(r3.instance), "ownKeys") };
var O = { construct(r3, e, t) {
  try {
    H();
    let n = { instance: Reflect.construct(r3, e, t), instanceId: p.instanceId, ctor: r3, args: e, newTarget: t };
    return new Proxy(n, { ...xe, get(_, a, f) {
      _.instanceId !== p.instanceId && (_.instance = Reflect.construct(_.ctor, _.args, _.newTarget), _.instanceId = p.instanceId);
      let u = Reflect.get(_.instance, a, f);
      return typeof u != "function" ? u : u.constructor === Function ? new Proxy(u, { apply(g, I, j) {
        H();
        try {
          return g.apply(I, j);
        } catch (F) {
          throw G(F), F;
        }
      } }) : new Proxy(u, { async apply(g, I, j) {
        H();
        try {
          return await g.apply(I, j);
        } catch (F) {
          throw G(F), F;
        }
      } });
    } });
  } catch (n) {
    throw p.criticalError = true, n;
  }
} };
var Se = new Proxy(U, O);
var We = new Proxy(x, O);
var ke = new Proxy(v, O);
var Ae = new Proxy(E, O);
var ze = new Proxy(R, O);

// ../node_modules/wrangler/templates/middleware/middleware-ensure-req-body-drained.ts
var drainBody = /* @__PURE__ */ __name(async (request, env, _ctx, middlewareCtx) => {
  try {
    return await middlewareCtx.next(request, env);
  } finally {
    try {
      if (request.body !== null && !request.bodyUsed) {
        const reader = request.body.getReader();
        while (!(await reader.read()).done) {
        }
      }
    } catch (e) {
      console.error("Failed to drain the unused request body.", e);
    }
  }
}, "drainBody");
var middleware_ensure_req_body_drained_default = drainBody;

// ../node_modules/wrangler/templates/middleware/middleware-miniflare3-json-error.ts
function reduceError(e) {
  return {
    name: e?.name,
    message: e?.message ?? String(e),
    stack: e?.stack,
    cause: e?.cause === void 0 ? void 0 : reduceError(e.cause)
  };
}
__name(reduceError, "reduceError");
var jsonError = /* @__PURE__ */ __name(async (request, env, _ctx, middlewareCtx) => {
  try {
    return await middlewareCtx.next(request, env);
  } catch (e) {
    const error = reduceError(e);
    return Response.json(error, {
      status: 500,
      headers: { "MF-Experimental-Error-Stack": "true" }
    });
  }
}, "jsonError");
var middleware_miniflare3_json_error_default = jsonError;

// .wrangler/tmp/bundle-YkjtVz/middleware-insertion-facade.js
var __INTERNAL_WRANGLER_MIDDLEWARE__ = [
  middleware_ensure_req_body_drained_default,
  middleware_miniflare3_json_error_default
];
var middleware_insertion_facade_default = Se;

// ../node_modules/wrangler/templates/middleware/common.ts
var __facade_middleware__ = [];
function __facade_register__(...args) {
  __facade_middleware__.push(...args.flat());
}
__name(__facade_register__, "__facade_register__");
function __facade_invokeChain__(request, env, ctx, dispatch, middlewareChain) {
  const [head, ...tail] = middlewareChain;
  const middlewareCtx = {
    dispatch,
    next(newRequest, newEnv) {
      return __facade_invokeChain__(newRequest, newEnv, ctx, dispatch, tail);
    }
  };
  return head(request, env, ctx, middlewareCtx);
}
__name(__facade_invokeChain__, "__facade_invokeChain__");
function __facade_invoke__(request, env, ctx, dispatch, finalMiddleware) {
  return __facade_invokeChain__(request, env, ctx, dispatch, [
    ...__facade_middleware__,
    finalMiddleware
  ]);
}
__name(__facade_invoke__, "__facade_invoke__");

// .wrangler/tmp/bundle-YkjtVz/middleware-loader.entry.ts
var __Facade_ScheduledController__ = class ___Facade_ScheduledController__ {
  constructor(scheduledTime, cron, noRetry) {
    this.scheduledTime = scheduledTime;
    this.cron = cron;
    this.#noRetry = noRetry;
  }
  static {
    __name(this, "__Facade_ScheduledController__");
  }
  #noRetry;
  noRetry() {
    if (!(this instanceof ___Facade_ScheduledController__)) {
      throw new TypeError("Illegal invocation");
    }
    this.#noRetry();
  }
};
function wrapExportedHandler(worker) {
  if (__INTERNAL_WRANGLER_MIDDLEWARE__ === void 0 || __INTERNAL_WRANGLER_MIDDLEWARE__.length === 0) {
    return worker;
  }
  for (const middleware of __INTERNAL_WRANGLER_MIDDLEWARE__) {
    __facade_register__(middleware);
  }
  const fetchDispatcher = /* @__PURE__ */ __name(function(request, env, ctx) {
    if (worker.fetch === void 0) {
      throw new Error("Handler does not export a fetch() function.");
    }
    return worker.fetch(request, env, ctx);
  }, "fetchDispatcher");
  return {
    ...worker,
    fetch(request, env, ctx) {
      const dispatcher = /* @__PURE__ */ __name(function(type, init) {
        if (type === "scheduled" && worker.scheduled !== void 0) {
          const controller = new __Facade_ScheduledController__(
            Date.now(),
            init.cron ?? "",
            () => {
            }
          );
          return worker.scheduled(controller, env, ctx);
        }
      }, "dispatcher");
      return __facade_invoke__(request, env, ctx, dispatcher, fetchDispatcher);
    }
  };
}
__name(wrapExportedHandler, "wrapExportedHandler");
function wrapWorkerEntrypoint(klass) {
  if (__INTERNAL_WRANGLER_MIDDLEWARE__ === void 0 || __INTERNAL_WRANGLER_MIDDLEWARE__.length === 0) {
    return klass;
  }
  for (const middleware of __INTERNAL_WRANGLER_MIDDLEWARE__) {
    __facade_register__(middleware);
  }
  return class extends klass {
    #fetchDispatcher = /* @__PURE__ */ __name((request, env, ctx) => {
      this.env = env;
      this.ctx = ctx;
      if (super.fetch === void 0) {
        throw new Error("Entrypoint class does not define a fetch() function.");
      }
      return super.fetch(request);
    }, "#fetchDispatcher");
    #dispatcher = /* @__PURE__ */ __name((type, init) => {
      if (type === "scheduled" && super.scheduled !== void 0) {
        const controller = new __Facade_ScheduledController__(
          Date.now(),
          init.cron ?? "",
          () => {
          }
        );
        return super.scheduled(controller);
      }
    }, "#dispatcher");
    fetch(request) {
      return __facade_invoke__(
        request,
        this.env,
        this.ctx,
        this.#dispatcher,
        this.#fetchDispatcher
      );
    }
  };
}
__name(wrapWorkerEntrypoint, "wrapWorkerEntrypoint");
var WRAPPED_ENTRY;
if (typeof middleware_insertion_facade_default === "object") {
  WRAPPED_ENTRY = wrapExportedHandler(middleware_insertion_facade_default);
} else if (typeof middleware_insertion_facade_default === "function") {
  WRAPPED_ENTRY = wrapWorkerEntrypoint(middleware_insertion_facade_default);
}
var middleware_loader_entry_default = WRAPPED_ENTRY;
export {
  We as ContainerStartupOptions,
  ke as MinifyConfig,
  Ae as Namespace,
  ze as R2Range,
  __INTERNAL_WRANGLER_MIDDLEWARE__,
  middleware_loader_entry_default as default
};
//# sourceMappingURL=index.js.map
