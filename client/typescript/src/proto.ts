/**
 * Loads the contract, proto/turnstore/v1/turnstore.proto, at run time from
 * the package's own copy of it (client/typescript/proto/ in the repository,
 * kept identical to the repository's proto/ by `make check`), so that an
 * installed package needs nothing outside itself.
 *
 * The message and client types come from src/gen/, generated from the same
 * file by `npm run gen` (scripts/gen-types.js) with flags matching
 * {@link LOADER_OPTIONS}: field names as in the proto (snake_case), 64-bit
 * integers as decimal strings, enums as their names, defaults filled in.
 */
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "./gen/turnstore";

export type { AppendResponse__Output as AppendResponse } from "./gen/turnstore/v1/AppendResponse";
export type { AppendStreamRequest } from "./gen/turnstore/v1/AppendStreamRequest";
export type { AppendStreamResponse__Output as AppendStreamResponse } from "./gen/turnstore/v1/AppendStreamResponse";
export type { FinishTurnResponse__Output as FinishTurnResponse } from "./gen/turnstore/v1/FinishTurnResponse";
export type { GetTurnResponse__Output as GetTurnResponse } from "./gen/turnstore/v1/GetTurnResponse";
export type { EventCountResponse__Output as EventCountResponse } from "./gen/turnstore/v1/EventCountResponse";
export type { ClearResponse__Output as ClearResponse } from "./gen/turnstore/v1/ClearResponse";
export type { SaveResponse__Output as SaveResponse } from "./gen/turnstore/v1/SaveResponse";
export type { LoadResponse__Output as LoadResponse } from "./gen/turnstore/v1/LoadResponse";
export type { DeleteResponse__Output as DeleteResponse } from "./gen/turnstore/v1/DeleteResponse";
export type { BatchResponse__Output as BatchResponse } from "./gen/turnstore/v1/BatchResponse";
export type { ListKeysResponse__Output as ListKeysResponse } from "./gen/turnstore/v1/ListKeysResponse";
export type { EventEnvelope as WireEnvelope } from "./gen/turnstore/v1/EventEnvelope";
export type { EventEnvelope__Output as WireEnvelopeOutput } from "./gen/turnstore/v1/EventEnvelope";
export type { AdminServiceClient } from "./gen/turnstore/v1/AdminService";
export type { GetStatsResponse__Output as GetStatsResponse } from "./gen/turnstore/v1/GetStatsResponse";
export type { EventStoreServiceClient } from "./gen/turnstore/v1/EventStoreService";
export type { HistoryStoreServiceClient } from "./gen/turnstore/v1/HistoryStoreService";
export type { ListTurnsResponse__Output as ListTurnsResponse } from "./gen/turnstore/v1/ListTurnsResponse";
export type { ListVersionsResponse__Output as ListVersionsResponse } from "./gen/turnstore/v1/ListVersionsResponse";
export type { ReadEventsRequest } from "./gen/turnstore/v1/ReadEventsRequest";
export type { ReadEventsResponse__Output as ReadEventsResponse } from "./gen/turnstore/v1/ReadEventsResponse";
export type { ReplayRequest } from "./gen/turnstore/v1/ReplayRequest";
export type { ReplayResponse__Output as ReplayResponse } from "./gen/turnstore/v1/ReplayResponse";
export type { StoredEvent__Output as WireStoredEvent } from "./gen/turnstore/v1/StoredEvent";
export type { Turn__Output as WireTurn } from "./gen/turnstore/v1/Turn";

/**
 * The package's proto/ directory: this file is compiled to dist/src/proto.js,
 * two levels below the package root, in the repository and once installed.
 */
export const DEFAULT_PROTO_DIR = path.resolve(__dirname, "..", "..", "proto");

const PROTO_FILE = "turnstore/v1/turnstore.proto";

/** Keep in step with the flags in scripts/gen-types.js. */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** The service constructors of package turnstore.v1. */
export type TurnstoreV1 = ProtoGrpcType["turnstore"]["v1"];

const loaded = new Map<string, TurnstoreV1>();

/**
 * The turnstore.v1 package loaded from `protoDir` (the directory holding
 * turnstore/v1/turnstore.proto), parsed once per directory.
 *
 * Throws the loader's error (ENOENT, a parse error) when the file is missing
 * or invalid.
 */
export function loadTurnstoreV1(protoDir: string = DEFAULT_PROTO_DIR): TurnstoreV1 {
  const dir = path.resolve(protoDir);
  let v1 = loaded.get(dir);
  if (v1 === undefined) {
    const definition = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [dir] });
    const root = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    v1 = root.turnstore.v1;
    loaded.set(dir, v1);
  }
  return v1;
}
