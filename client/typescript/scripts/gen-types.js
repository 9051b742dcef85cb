#!/usr/bin/env node
// Generates src/gen/: TypeScript types of the messages and service clients of
// ../../proto/turnstore/v1/turnstore.proto (types only: the proto itself is
// loaded at run time by src/proto.ts). The flags must match LOADER_OPTIONS
// in src/proto.ts, since they decide the shapes of the decoded messages.
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const outDir = path.join(root, "src", "gen");
const protoDir = path.resolve(root, "..", "..", "proto");
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
    protoDir,
    "--outDir",
    outDir,
    "turnstore/v1/turnstore.proto",
  ],
  { stdio: "inherit" },
);
