#!/usr/bin/env node
// Generates src/gen/: TypeScript types of the messages and service clients of
// proto/turnstore/v1/turnstore.proto, the package's own copy of the
// repository's proto (types only: the proto itself is loaded at run time by
// src/proto.ts, from the same copy). `make proto` refreshes the copy and
// `make check` fails when it differs from ../../proto. The flags must match
// LOADER_OPTIONS in src/proto.ts, since they decide the shapes of the decoded
// messages.
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const outDir = path.join(root, "src", "gen");
const bin = path.join(root, "node_modules", ".bin", "proto-loader-gen-types");

fs.rmSync(outDir, { recursive: true, force: true });
execFileSync(
  bin,
  [
    "--keepCase",
    "--longs=String",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--grpcLib=@grpc/grpc-js",
    "--includeDirs",
    "proto",
    "--outDir",
    outDir,
    "turnstore/v1/turnstore.proto",
  ],
  // Relative to the package root, so that the "Original file" comment of
  // each generated file (shipped in the package) names no path of the
  // machine that built it.
  { cwd: root, stdio: "inherit" },
);
