/**
 * The whole story against a live licensing server: sign up, log in, create an enclave
 * while printing its streamed progress, verify its attestation, then store and read a
 * secret in it and have it sign, checking the signature against the attested certificate.
 *
 *   LICENSING_ENROLL_ADDR=127.0.0.1:8443 LICENSING_API_ADDR=127.0.0.1:9443 \
 *   LICENSING_CA_FILE=.licensing/ca.pem node dist/examples/story.js
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

import { LicensingClient, Phase, verifySignature, type EnclaveAttestation } from "../src/index.js";

export interface StoryConfig {
  enrollAddr: string;
  apiAddr: string;
  caPem: string;
  username: string;
  password: string;
}

export interface StoryResult {
  enclaveId: string;
  phases: Phase[];
  checks: string[];
  secret: Uint8Array;
  signature: Uint8Array;
  certificatePem: string;
  /** Milliseconds from the create call to its first event and to the verified attestation. */
  firstEventMs: number;
  verifiedMs: number;
}

export async function story(config: StoryConfig, log: (line: string) => void = console.log): Promise<StoryResult> {
  const client = new LicensingClient(config.enrollAddr, config.apiAddr, { caPem: config.caPem });
  try {
    const account = await client.signUp(config.username, config.password);
    log(`signed up ${account.username} (${account.userId})`);
    await client.logIn(config.username, config.password);
    log(`logged in; client certificate until ${client.session.clientCertificateExpireTime.toISOString()}`);

    const started = performance.now();
    let firstEventMs = -1;
    const phases: Phase[] = [];
    let verified: EnclaveAttestation | undefined;
    for await (const event of client.createEnclave()) {
      if (firstEventMs < 0) firstEventMs = performance.now() - started;
      if (event.kind === "progress") {
        phases.push(event.phase);
        log(`  #${event.sequence} ${Phase[event.phase]}: ${event.message}`);
      } else if (event.kind === "reconnecting") {
        log(`  stream dropped (${String(event.error)}); reconnecting in ${Math.round(event.delayMs)} ms`);
      } else if (event.kind === "fetching-attestation") {
        log(`  fetching a fresh attestation: ${event.why}`);
      } else {
        verified = event.attestation;
      }
    }
    const verifiedMs = performance.now() - started;
    if (verified === undefined) throw new Error("createEnclave ended without a verified attestation");
    for (const result of verified.report.checks) log(`  verified ${result.check}: ${result.detail}`);

    const enclave = client.sessionFor(verified);
    const identity = await enclave.getIdentity();
    if (!identity.matchesPinnedCertificate) throw new Error("the enclave names another certificate");
    const secret = randomBytes(24);
    await enclave.putSecret("api-key", secret);
    const back = await enclave.getSecret("api-key");
    if (!Buffer.from(back).equals(secret)) throw new Error("the secret came back different");
    log(`stored and read back a ${secret.length}-byte secret in enclave ${enclave.enclave.id}`);
    const data = Buffer.from(`licensed to ${account.username}`);
    const signed = await enclave.sign(data); // verified against the pinned certificate already
    if (!verifySignature(verified.enclave.certificatePem, data, signed.signature)) {
      throw new Error("the signature does not verify");
    }
    log(`the enclave signed ${data.length} bytes; the signature verifies against its attested certificate`);
    return {
      enclaveId: enclave.enclave.id,
      phases,
      checks: verified.report.checks.map((c) => c.check),
      secret: back,
      signature: signed.signature,
      certificatePem: verified.enclave.certificatePem,
      firstEventMs,
      verifiedMs,
    };
  } finally {
    client.close();
  }
}

/** The story's settings from the environment (undefined when the server's are not all there). */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): StoryConfig | undefined {
  const { LICENSING_ENROLL_ADDR: enrollAddr, LICENSING_API_ADDR: apiAddr, LICENSING_CA_FILE: caFile } = env;
  if (!enrollAddr || !apiAddr || !caFile) return undefined;
  return {
    enrollAddr,
    apiAddr,
    caPem: readFileSync(caFile, "utf8"),
    username: env.LICENSING_USERNAME || `ts-${randomBytes(4).toString("hex")}`,
    password: env.LICENSING_PASSWORD || randomBytes(12).toString("base64url"),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const config = configFromEnv();
  if (config === undefined) {
    console.error("set LICENSING_ENROLL_ADDR, LICENSING_API_ADDR and LICENSING_CA_FILE");
    process.exit(2);
  }
  story(config).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
