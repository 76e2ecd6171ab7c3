#!/usr/bin/env python3
"""Generate the validation tables of `oai_resilience::validate` from the shared rule data.

Input: `rules.json` (made by `extract_rules.py` from OpenAI's `openapi.yaml`; see
`VALIDATION-NOTES.md` beside it). Output: `oai-resilience/src/validate/rules_gen.rs`, a set of
`static` schema nodes, one root per operation. The output is deterministic and committed, so the
crate builds without `../shared`; the test `validate_tables` regenerates it when `../shared`
is present and fails if the committed file is stale.

    python3 scripts/gen_validation_rules.py                  # write rules_gen.rs
    python3 scripts/gen_validation_rules.py --stdout         # print it instead
    python3 scripts/gen_validation_rules.py --examples       # (needs PyYAML) extract the
                                                             # spec's request examples into
                                                             # tests/data/validate/spec_examples/

Translation (what the validator may reject, by VALIDATION-NOTES.md):
  * `enum` is closed; `known_values` (model ids, sizes, voices) is open and dropped.
  * `nullable` is honoured everywhere; `conflicts` were already OR-ed by the extractor.
  * `one_of`/`any_of` both mean "valid if any alternative is valid" (never stricter than the
    server). A discriminator is the `discriminator` the spec names, or else a property that is
    a `const` in every alternative.
  * Inside the Responses `input` and `tools` trees, nested `required` lists are not enforced
    (unconfirmed, section 3.6) and a value no alternative explains passes ("lenient").
  * `truncated` and `any` nodes accept anything; `pattern` and `format` are not checked.
  * Bounds of +-9.2e18 (int64 through a double) and `format: int64` become "must fit in an
    i64"; no other `format` is checked.
  * A few limits that the spec states only in prose (section 3.3) are added below in OVERRIDES,
    each citing its source. They are the only rules not read from rules.json.
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_shared():
    """`$OAI_SHARED_DIR`, else the first `shared/openai-openapi` in a parent of the repository."""
    env = os.environ.get("OAI_SHARED_DIR")
    if env:
        return env
    d = ROOT
    for _ in range(4):
        d = os.path.dirname(d)
        cand = os.path.join(d, "shared", "openai-openapi")
        if os.path.isdir(cand):
            return cand
    return os.path.join(ROOT, "..", "shared", "openai-openapi")


SHARED = find_shared()
DEFAULT_RULES = os.path.join(SHARED, "rules.json")
DEFAULT_SPEC = os.path.join(SHARED, "openapi.yaml")
OUT = os.path.join(ROOT, "oai-resilience", "src", "validate", "rules_gen.rs")
EXAMPLES_DIR = os.path.join(ROOT, "oai-resilience", "tests", "data", "validate", "spec_examples")

# Operation -> Rust `Endpoint` variant.
ENDPOINTS = {
    "POST /chat/completions": "ChatCompletions",
    "POST /completions": "Completions",
    "POST /embeddings": "Embeddings",
    "POST /responses": "Responses",
    "POST /moderations": "Moderations",
    "POST /images/generations": "ImageGenerations",
    "POST /audio/speech": "AudioSpeech",
}

# Subtrees whose nested `required` lists are unconfirmed (VALIDATION-NOTES.md 3.6): the
# Responses input items and tools, and the prompt variables, which reuse the input content
# types (`InputImageContent` requires `detail`, which its own description says defaults).
LENIENT = {("POST /responses", "input"), ("POST /responses", "tools"),
           ("POST /responses", "prompt.variables")}

# Limits stated only in prose (VALIDATION-NOTES.md 3.3). Path syntax: property names joined
# by ".", "[]" for array items, "*" for map values, "|N" for the N-th alternative.
OVERRIDES = [
    # `Metadata`: "Set of 16 key-value pairs", keys <= 64 chars, values <= 512 chars.
    ("*", "metadata", {"max_properties": 16, "key_max_length": 64}),
    ("*", "metadata.*", {"maxLength": 512}),
    # `logit_bias`: "values from -100 to 100" (chat and completions descriptions).
    ("*", "logit_bias.*", {"minimum": -100, "maximum": 100}),
    # `FunctionObject.name`: a-z, A-Z, 0-9, underscores and dashes, maximum length of 64.
    ("POST /chat/completions", "tools[]|0.function.name", {"maxLength": 64, "format": "FunctionName"}),
    ("POST /chat/completions", "functions[].name", {"maxLength": 64, "format": "FunctionName"}),
    # Embeddings `input`: "The input must not ... be an empty string".
    ("POST /embeddings", "input|0", {"minLength": 1}),
    ("POST /embeddings", "input|1[]", {"minLength": 1}),
]

TYPE_BITS = {"string": "T_STRING", "number": "T_NUMBER", "integer": "T_INTEGER",
             "boolean": "T_BOOLEAN", "array": "T_ARRAY", "object": "T_OBJECT"}
INT64_EDGE = 9.2e18


def rust_str(s):
    return json.dumps(s, ensure_ascii=False)


def rust_f64(x):
    x = float(x)
    if x == int(x):
        return "%d.0" % int(x)
    return repr(x)


def is_const(prop):
    """A property whose value is fixed: a `const` or a one-value `enum`."""
    return "const" in prop or len(prop.get("enum", [])) == 1


class Gen:
    def __init__(self):
        self.nodes = []  # list of rust expressions
        self.index = {}  # expression -> name
        self.applied = set()

    def node(self, op, path, n, lenient, top=False):
        """Emits the node for schema summary `n` at `path`; returns its static's name."""
        f = {}
        types = [] if (n.get("truncated") or n.get("any")) else n.get("types", [])
        f["types"] = " | ".join(TYPE_BITS[t] for t in types) or "T_ANY"
        f["nullable"] = "true" if n.get("nullable") else "false"
        f["deprecated"] = "true" if n.get("deprecated") else "false"
        f["lenient"] = "true" if lenient else "false"
        f["enum_values"] = "&[%s]" % ", ".join(rust_str(v) for v in n.get("enum", []))
        lo, hi = n.get("minimum"), n.get("maximum")
        int64 = False
        if lo is not None and float(lo) <= -INT64_EDGE:
            lo, int64 = None, True
        if hi is not None and float(hi) >= INT64_EDGE:
            hi, int64 = None, True
        if n.get("format") == "int64":
            int64 = True
        extra = {}
        for o_op, o_path, o_vals in OVERRIDES:
            if (o_op == "*" or o_op == op) and o_path == path:
                extra.update(o_vals)
                self.applied.add((o_op, o_path))
        lo = extra.get("minimum", lo)
        hi = extra.get("maximum", hi)
        f["minimum"] = "Some(%s)" % rust_f64(lo) if lo is not None else "None"
        f["maximum"] = "Some(%s)" % rust_f64(hi) if hi is not None else "None"
        f["int64"] = "true" if int64 else "false"
        for key, field in (("minItems", "min_items"), ("maxItems", "max_items"),
                           ("minLength", "min_length"), ("maxLength", "max_length"),
                           ("max_properties", "max_properties"), ("key_max_length", "key_max_length")):
            v = extra.get(key, n.get(key))
            f[field] = "Some(%d)" % v if v is not None else "None"
        f["format"] = "Format::%s" % extra.get("format", "None")
        items = n.get("items")
        f["items"] = "Some(&%s)" % self.node(op, path + "[]", items, lenient) if isinstance(items, dict) and not types == [] else "None"
        props = []
        for name, sub in n.get("properties", {}).items():
            sub_path = name if top else path + "." + name
            child_lenient = lenient or (op, sub_path) in LENIENT
            props.append("Prop { name: %s, node: &%s }" % (rust_str(name), self.node(op, sub_path, sub, child_lenient)))
        f["properties"] = "&[%s]" % ", ".join(props)
        required = n.get("required_properties", [])
        if top:
            required = n.get("required", [])
        if lenient:
            required = []
        f["required"] = "&[%s]" % ", ".join(rust_str(r) for r in required)
        ap = n.get("additionalProperties", True)
        if ap is False:
            f["additional"] = "Additional::Forbidden"
        elif isinstance(ap, dict) and not (ap.get("any") or ap.get("truncated")):
            f["additional"] = "Additional::Schema(&%s)" % self.node(op, path + ".*", ap, lenient)
        else:
            f["additional"] = "Additional::Allowed"
        alts = list(n.get("one_of", [])) + list(n.get("any_of", []))
        names = [self.node(op, "%s|%d" % (path, i), a, lenient) for i, a in enumerate(alts)]
        f["alternatives"] = "&[%s]" % ", ".join("&" + x for x in names)
        f["discriminator"] = "None"
        if alts:
            disc = n.get("discriminator")
            # Only the object alternatives can be told apart by a property.
            objects = [a for a in alts if "object" in a.get("types", [])]
            if not disc:
                common = None
                for a in objects:
                    consts = {k for k, v in a.get("properties", {}).items() if is_const(v)}
                    common = consts if common is None else common & consts
                if common:
                    disc = sorted(common)[0]
            if disc and len(objects) > 1 and all(is_const(a.get("properties", {}).get(disc, {})) for a in objects):
                f["discriminator"] = "Some(%s)" % rust_str(disc)
        body = "Node { %s }" % ", ".join("%s: %s" % kv for kv in f.items())
        if body in self.index:
            return self.index[body]
        name = "N%d" % len(self.nodes)
        self.index[body] = name
        self.nodes.append((name, body))
        return name


def generate(rules_path):
    with open(rules_path, encoding="utf-8") as fh:
        rules = json.load(fh)
    g = Gen()
    roots = []
    for op in rules["operations"]:
        key = op["operation"]
        if key not in ENDPOINTS:
            continue
        root = {"types": ["object"], "properties": op["properties"], "required": op["required"],
                "additionalProperties": op.get("additionalProperties", True)}
        roots.append((ENDPOINTS[key], op["schema"], g.node(key, "", root, False, top=True)))
    missing = [o for o in OVERRIDES if (o[0], o[1]) not in g.applied]
    if missing:
        sys.exit("overrides that matched no node: %r" % missing)
    spec = rules["spec"]
    out = []
    out.append("// @generated by scripts/gen_validation_rules.py from ../shared/openai-openapi/rules.json.")
    out.append("// Do not edit: change the generator or the data and regenerate.")
    out.append("// Spec: %s, info.version %s, sha256 %s." % (spec.get("source"), spec.get("info_version"), spec.get("sha256")))
    out.append("// Prose-only limits added by the generator (VALIDATION-NOTES.md 3.3):")
    for o_op, o_path, o_vals in OVERRIDES:
        out.append("//   %s %s: %s" % (o_op, o_path, json.dumps(o_vals, sort_keys=True)))
    out.append("")
    out.append("use super::schema::*;")
    out.append("")
    out.append("/// The spec's `info.version` the tables were generated from.")
    out.append("pub(crate) const SPEC_VERSION: &str = %s;" % rust_str(spec.get("info_version", "")))
    out.append("")
    out.append("/// Root schema of each endpoint: (endpoint, request schema name, root node).")
    out.append("pub(crate) static ROOTS: [(Endpoint, &str, &Node); %d] = [" % len(roots))
    for ep, schema, name in roots:
        out.append("    (Endpoint::%s, %s, &%s)," % (ep, rust_str(schema), name))
    out.append("];")
    out.append("")
    for name, body in g.nodes:
        # The derived fields (key table, required slots, flags) are computed at compile time.
        out.append("static %s: Node = %s.derive();" % (name, body[:-2] + ", ..DERIVED }"))
    return "\n".join(out) + "\n"


def extract_examples(spec_path, out_dir=EXAMPLES_DIR):
    try:
        import yaml
    except ImportError:
        sys.exit("--examples needs PyYAML (pip install pyyaml)")
    with open(spec_path, encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    os.makedirs(out_dir, exist_ok=True)
    count = 0
    for key, ep in ENDPOINTS.items():
        method, path = key.split(" ", 1)
        op = spec["paths"][path][method.lower()]
        examples = op.get("x-oaiMeta", {}).get("examples", [])
        if isinstance(examples, dict):
            examples = [examples]
        for i, ex in enumerate(examples):
            curl = ex.get("request", {}).get("curl", "")
            m = re.search(r"-d '(.*?)'\s*(\\\n|$)", curl, re.S)
            if not m:
                continue
            body = json.loads(m.group(1))
            slug = re.sub(r"[^a-z0-9]+", "_", (ex.get("title") or "example").lower()).strip("_")
            fname = "%s__%02d_%s.json" % (ep, i, slug)
            with open(os.path.join(out_dir, fname), "w", encoding="utf-8") as out:
                json.dump(body, out, indent=2, ensure_ascii=False)
                out.write("\n")
            count += 1
    print("wrote %d examples to %s" % (count, out_dir))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default=DEFAULT_RULES)
    ap.add_argument("--spec", default=DEFAULT_SPEC)
    ap.add_argument("--stdout", action="store_true")
    ap.add_argument("--examples", action="store_true")
    ap.add_argument("--examples-out", default=EXAMPLES_DIR)
    args = ap.parse_args()
    if args.examples:
        extract_examples(args.spec, args.examples_out)
        return
    text = generate(args.rules)
    if args.stdout:
        sys.stdout.write(text)
    else:
        with open(OUT, "w", encoding="utf-8") as fh:
            fh.write(text)
        print("wrote %s" % OUT)


if __name__ == "__main__":
    main()
