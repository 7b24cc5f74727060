/**
 * followAttestations against a live server that re-attests every few seconds
 * (tests/clients/test_typescript_reattest.py sets LICENSING_REATTEST=1 besides the
 * addresses); skipped otherwise, since a server on the 30 s default would make it slow.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";

import { configFromEnv, type StoryConfig } from "../examples/story.js";
import type { Enclave } from "../src/gen/licensing/v1/enclave_pb.js";
import { EnclaveFailedError, LicensingClient } from "../src/index.js";

const config = configFromEnv();
const skip =
  config === undefined || process.env.LICENSING_REATTEST !== "1"
    ? "not a quickly re-attesting live server (LICENSING_REATTEST=1)"
    : false;

test("followAttestations verifies each round, one over our nonce, until the enclave is gone", { skip }, async () => {
  const cfg = config as StoryConfig;
  const client = new LicensingClient(cfg.enrollAddr, cfg.apiAddr, { caPem: cfg.caPem });
  try {
    const username = `ts-rounds-${randomBytes(4).toString("hex")}`;
    await client.signUp(username, cfg.password);
    await client.logIn(username, cfg.password);
    let enclave: Enclave | undefined;
    let sequence = 0n;
    for await (const event of client.createEnclave()) {
      if (event.kind === "progress") sequence = event.sequence;
      if (event.kind === "created") enclave = event.enclave;
    }
    assert.ok(enclave);
    const mine = randomBytes(32);
    let rounds = 0;
    let requested = false;
    await assert.rejects(
      (async () => {
        for await (const event of client.followAttestations(enclave.id, { nonce: mine, fromSequence: sequence })) {
          if (event.kind !== "reattested") continue;
          rounds += 1;
          requested ||= event.requested;
          assert.ok(event.round > 0n);
          assert.ok(event.attestation.report.checks.length > 0);
          if (rounds === 2) await client.deleteEnclave(enclave.id);
        }
      })(),
      (error: unknown) => error instanceof EnclaveFailedError,
    );
    assert.ok(rounds >= 2, `${rounds} verified rounds`);
    assert.ok(requested, "our nonce was quoted");
  } finally {
    client.close();
  }
});
