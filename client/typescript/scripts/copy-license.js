#!/usr/bin/env node
// Run by `npm pack` / `npm publish` (the prepack script): copies the
// repository's LICENSE into the package root, so the tarball carries the
// licence text its package.json names. The copy is not committed
// (.gitignore); when the repository has no LICENSE the package ships without
// one, which this script says rather than failing the pack.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const source = path.resolve(root, "..", "..", "LICENSE");
const target = path.join(root, "LICENSE");

if (fs.existsSync(source)) {
  fs.copyFileSync(source, target);
} else {
  console.warn(`copy-license: ${source} not found; the package has no LICENSE file`);
}
