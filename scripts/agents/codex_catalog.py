#!/usr/bin/env python3
"""Write a Codex model catalog (for `-c model_catalog_json=FILE`) with one entry for a kooka model.

Codex 0.169 sends the `custom` apply_patch tool (Lark grammar) only for models whose metadata says
`apply_patch_tool_type: "freeform"`; an unknown model id gets fallback metadata without it. This
copies the `gpt-5.5` entry of the catalog embedded in the installed codex binary and renames it.

Usage: python3 scripts/agents/codex_catalog.py --model M [--context 32768] [--out FILE]
"""
import argparse, copy, glob, json, os, sys

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--context", type=int, default=32768)
ap.add_argument("--template", default="gpt-5.5")
ap.add_argument("--out", default="-")
ap.add_argument("--codex-bin", help="native codex binary (default: found under third_party/agents)")
a = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
bins = [a.codex_bin] if a.codex_bin else sorted(glob.glob(
    os.path.join(root, "third_party/agents/node_modules/@openai/codex-*/vendor/*/bin/codex")))
if not bins:
    sys.exit("codex_catalog.py: no codex binary; run scripts/agents/install.sh")
data = open(bins[0], "rb").read()
i = data.find(b'"slug": "%s"' % a.template.encode())
if i < 0:
    sys.exit("codex_catalog.py: template %s not in %s" % (a.template, bins[0]))
start = data.rfind(b"{", 0, data.rfind(b'"models"', 0, i))
cat, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", "replace"))
m = copy.deepcopy(next(m for m in cat["models"] if m["slug"] == a.template))
m.update(slug=a.model, display_name=a.model, description="kooka local model",
         prefer_websockets=False, context_window=a.context, max_context_window=a.context,
         supports_search_tool=False, include_skills_usage_instructions=False,
         include_apps_usage_instructions=False, include_plugin_usage_instructions=False,
         upgrade=None, default_reasoning_summary="none", service_tiers=[],
         additional_speed_tiers=[])
out = json.dumps({"models": [m]}, indent=1)
if a.out == "-":
    print(out)
else:
    open(a.out, "w").write(out + "\n")
