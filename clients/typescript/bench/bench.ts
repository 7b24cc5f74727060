/**
 * Figures of the TypeScript client, printed as one JSON line (bench/typescript_client_bench.py
 * starts the stack, runs this and prints the table):
 *
 * - creates: --creates enclaves one after the other, each timed from the createEnclave call
 *   to its first progress event and to the verified attestation (the Created event), then
 *   deleted;
 * - verifications: verifyAttestation back to back for --seconds on every valid vector of
 *   --vectors (the shared vectors), or on the attestations of the creates without one;
 *   the rate is per CPU-second of this (single-threaded) process, i.e. per core.
 *
 * The server comes from LICENSING_ENROLL_ADDR, LICENSING_API_ADDR, LICENSING_CA_FILE.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { fromJson, type JsonValue } from "@bufbuild/protobuf";

import { configFromEnv } from "../examples/story.js";
import { AttestationSchema, LicensingClient, trustAnchors, verifyAttestation, type VerifyOptions } from "../src/index.js";
import type { Attestation } from "../src/gen/licensing/v1/attestation_pb.js";

const { values: args } = parseArgs({
  options: {
    creates: { type: "string", default: "20" },
    seconds: { type: "string", default: "5" },
    vectors: { type: "string", default: "" },
  },
});

interface Case {
  attestation: Attestation;
  options: VerifyOptions;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

function vectorCases(path: string): Case[] {
  const file = JSON.parse(readFileSync(path, "utf8")) as {
    verify_at: string;
    trusted_ca_pem: string[];
    vectors: { attestation: JsonValue; nonce: string; expected_certificate_pem: string; expected: { valid: boolean } }[];
  };
  const trustedCaPem = trustAnchors(file.trusted_ca_pem);
  return file.vectors
    .filter((v) => v.expected.valid)
    .map((v) => ({
      attestation: fromJson(AttestationSchema, v.attestation),
      options: {
        nonce: Buffer.from(v.nonce, "base64"),
        expectedCertificatePem: v.expected_certificate_pem,
        trustedCaPem,
        now: new Date(file.verify_at),
      },
    }));
}

async function creates(count: number, cases: Case[]): Promise<{ firstEventMs: number[]; verifiedMs: number[] }> {
  const config = configFromEnv();
  if (config === undefined) throw new Error("set LICENSING_ENROLL_ADDR, LICENSING_API_ADDR, LICENSING_CA_FILE");
  const client = new LicensingClient(config.enrollAddr, config.apiAddr, { caPem: config.caPem });
  const firstEventMs: number[] = [];
  const verifiedMs: number[] = [];
  try {
    const username = `bench-${randomBytes(4).toString("hex")}`;
    await client.signUp(username, config.password);
    await client.logIn(username, config.password);
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      let first = -1;
      for await (const event of client.createEnclave()) {
        if (first < 0) first = performance.now() - started;
        if (event.kind === "created" && event.attestation) {
          verifiedMs.push(performance.now() - started);
          const { attestation, nonce, enclave } = event.attestation;
          cases.push({
            attestation,
            options: { nonce, expectedCertificatePem: enclave.certificatePem, trustedCaPem: client.caAnchors },
          });
          await client.deleteEnclave(enclave.id);
        }
      }
      firstEventMs.push(first);
    }
  } finally {
    client.close();
  }
  return { firstEventMs, verifiedMs };
}

function verifications(cases: Case[], seconds: number): { count: number; cpuSeconds: number; wallSeconds: number } {
  for (const c of cases.slice(0, 50)) verifyAttestation(c.attestation, c.options); // warm up
  let count = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  const deadline = started + seconds * 1000;
  while (performance.now() < deadline) {
    for (const c of cases) {
      verifyAttestation(c.attestation, c.options);
      count++;
    }
  }
  const used = process.cpuUsage(cpu);
  return { count, cpuSeconds: (used.user + used.system) / 1e6, wallSeconds: (performance.now() - started) / 1000 };
}

const fromVectors = args.vectors !== "" && existsSync(args.vectors);
const cases: Case[] = fromVectors ? vectorCases(args.vectors) : [];
const timed = await creates(Number(args.creates), fromVectors ? [] : cases);
const verified = verifications(cases, Number(args.seconds));
const firstSorted = [...timed.firstEventMs].sort((a, b) => a - b);
const verifiedSorted = [...timed.verifiedMs].sort((a, b) => a - b);
console.log(
  JSON.stringify({
    creates: timed.verifiedMs.length,
    first_event_ms: { p50: percentile(firstSorted, 50), p95: percentile(firstSorted, 95) },
    create_to_verified_ms: { p50: percentile(verifiedSorted, 50), p95: percentile(verifiedSorted, 95) },
    verification: {
      source: fromVectors ? `shared vectors (${cases.length} valid)` : `the ${cases.length} created enclaves`,
      count: verified.count,
      per_cpu_second: verified.count / verified.cpuSeconds,
      per_wall_second: verified.count / verified.wallSeconds,
    },
    node: process.version,
  }),
);
