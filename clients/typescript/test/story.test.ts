/**
 * The example's story against a live server (tests/clients/test_typescript_client.py starts
 * one and sets LICENSING_ENROLL_ADDR, LICENSING_API_ADDR and LICENSING_CA_FILE); skipped only
 * when those are absent.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createSecureServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import { configFromEnv, story, type StoryConfig } from "../examples/story.js";
import {
  CHECKS,
  LicensingClient,
  LicensingError,
  NotLoggedInError,
  Phase,
  PinMismatchError,
  type EnclaveAttestation,
} from "../src/index.js";

const config = configFromEnv();
const skip = config === undefined ? "no live server (LICENSING_ENROLL_ADDR, LICENSING_API_ADDR, LICENSING_CA_FILE)" : false;

function causes(error: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e: unknown = error; e !== undefined && e !== null && chain.length < 10; e = (e as { cause?: unknown }).cause) {
    chain.push(e);
  }
  return chain;
}

describe("the example's story on a live server", { skip }, () => {
  const cfg = config as StoryConfig;

  test("sign up, log in, create with streamed progress, verify, secrets and a verified signature", async () => {
    const lines: string[] = [];
    const result = await story(cfg, (line) => lines.push(line));
    assert.deepEqual(result.phases, [
      Phase.ACCEPTED,
      Phase.SCHEDULED,
      Phase.RUNNING,
      Phase.CERTIFICATE_ISSUED,
      Phase.READY,
      Phase.ATTESTING,
      Phase.ATTESTED,
    ]);
    assert.deepEqual(result.checks, [...CHECKS]);
    assert.equal(result.secret.length, 24);
    assert.ok(lines.some((l) => l.includes("ATTESTED")));
    assert.ok(result.firstEventMs >= 0 && result.firstEventMs <= result.verifiedMs);
  });

  describe("an attested enclave session", () => {
    const client = new LicensingClient(cfg.enrollAddr, cfg.apiAddr, { caPem: cfg.caPem });
    let verified: EnclaveAttestation;

    before(async () => {
      const username = `ts-${randomBytes(4).toString("hex")}`;
      await client.signUp(username, cfg.password);
      await client.logIn(username, cfg.password);
      for await (const event of client.createEnclave()) {
        if (event.kind === "created" && event.attestation) verified = event.attestation;
      }
    });

    after(async () => {
      if (verified) await client.deleteEnclave(verified.enclave.id);
      client.close();
    });

    test("openEnclave verifies a fresh attestation before it connects", async () => {
      const session = await client.openEnclave(verified.enclave.id);
      assert.deepEqual(
        session.report.checks.map((c) => c.check),
        [...CHECKS],
      );
      const identity = await session.getIdentity();
      assert.equal(identity.enclaveId, verified.enclave.id);
      assert.ok(identity.matchesPinnedCertificate);
      await session.putSecret("a", Buffer.from("1"));
      assert.deepEqual(await session.listSecrets(), ["a"]);
      await session.deleteSecret("a");
      assert.deepEqual(await session.listSecrets(), []);
    });

    test("an endpoint presenting another certificate of the same CA gets no request, no token", async () => {
      // The user's own client certificate is another certificate from the licensing CA.
      const impostor = createSecureServer({ cert: client.session.clientCertificatePem, key: client.session.clientKeyPem });
      let streams = 0;
      impostor.on("stream", (stream) => {
        streams += 1;
        stream.respond({ ":status": 200, "content-type": "application/grpc" });
        stream.end();
      });
      await new Promise<void>((resolve) => impostor.listen(0, "127.0.0.1", resolve));
      try {
        const port = (impostor.address() as AddressInfo).port;
        const moved = { ...verified, enclave: { ...verified.enclave, id: `${verified.enclave.id}-moved`, endpoint: `127.0.0.1:${port}` } };
        const session = client.sessionFor(moved);
        await assert.rejects(session.getIdentity(), (error: unknown) => {
          // Refused in the TLS handshake: the attested certificate is the only trust anchor
          // (and checkServerIdentity compares the peer's SHA-256 with it, PinMismatchError).
          assert.ok(error instanceof LicensingError);
          assert.ok(
            causes(error).some((e) => e instanceof PinMismatchError || /certificate/i.test(String(e))),
            `a certificate refusal: ${String(error)}`,
          );
          return true;
        });
        assert.equal(streams, 0, "a request (with the token) reached the impostor");
      } finally {
        impostor.close();
      }
    });

    test("the enclave's signature is checked against the pinned certificate", async () => {
      const session = client.sessionFor(verified);
      const data = Buffer.from("data");
      const signed = await session.sign(data);
      assert.ok(signed.signature.length > 0);
      assert.equal(signed.certificatePem, verified.enclave.certificatePem);
    });

    test("server refusals keep their gRPC code and ErrorInfo reason", async () => {
      await assert.rejects(client.getEnclave("00000000-0000-0000-0000-000000000000"), (error: unknown) => {
        assert.ok(error instanceof LicensingError);
        assert.equal(error.code, 5); // NOT_FOUND
        assert.ok(error.reason, "an ErrorInfo reason");
        return true;
      });
      const stranger = new LicensingClient(cfg.enrollAddr, cfg.apiAddr, { caPem: cfg.caPem });
      try {
        assert.throws(() => stranger.session, NotLoggedInError);
        await assert.rejects(stranger.logIn(`no-${randomBytes(3).toString("hex")}`, "wrong-password"), (error: unknown) => {
          assert.ok(error instanceof LicensingError);
          assert.equal(error.code, 16); // UNAUTHENTICATED
          return true;
        });
      } finally {
        stranger.close();
      }
    });
  });
});
