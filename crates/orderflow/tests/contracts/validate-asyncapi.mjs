// Validates an AsyncAPI document with the AsyncAPI initiative's own parser
// (@asyncapi/parser: the JSON Schema of the spec plus its semantic rules,
// e.g. every $ref resolves, operation messages belong to their channel).
// Usage: node validate-asyncapi.mjs URL. Exits 1 on any error-level
// diagnostic, printing them all.
import { Parser } from "@asyncapi/parser";

const url = process.argv[2];
const text = await (await fetch(url)).text();
const { document, diagnostics } = await new Parser().parse(text);
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code}: ${d.message} at ${d.path.join(".")}`);
}
if (!document || errors.length > 0) {
  console.log(`${errors.length} errors`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.components().messages().all().length;
console.log(`valid AsyncAPI ${document.version()}: ${channels.length} channels (${channels.join(", ")}), ${messages} messages`);
