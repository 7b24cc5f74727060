/**
 * What needs no server: the TPM parsers' strictness, Merkle proofs, the CSR made here,
 * and the enclave pin against a local HTTP/2 server (certificates made with openssl).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createSecureServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { createClient } from "@connectrpc/connect";

import { MerkleProofError, merkleRoot, merkleRootFromProof, sha256 } from "../src/attestation/binding.js";
import { WorkloadService } from "../src/gen/enclave/v1/workload_pb.js";
import { StructureError, newKeyAndCsr, parseAttest, parsePublic, parseSignature, pinnedChannel } from "../src/index.js";

const opensslMissing = (() => {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return false;
  } catch {
    return "openssl is not installed";
  }
})();

/** Every leaf's sibling path, the slow obvious way (the server's MerkleTree.proof). */
function proofOf(values: Buffer[], index: number): Buffer[] {
  let level = values.map((v) => sha256(Uint8Array.of(0), v));
  const path: Buffer[] = [];
  let i = index;
  while (level.length > 1) {
    const sibling = level[i ^ 1];
    if (sibling !== undefined) path.push(sibling);
    const upper: Buffer[] = [];
    for (let j = 0; j + 1 < level.length; j += 2) {
      upper.push(sha256(Uint8Array.of(1), level[j] as Buffer, level[j + 1] as Buffer));
    }
    if (level.length % 2) upper.push(level[level.length - 1] as Buffer);
    level = upper;
    i = Math.floor(i / 2);
  }
  return path;
}

describe("Merkle proofs", () => {
  test("every leaf of trees of 1 to 9 leaves leads to the root", () => {
    for (let n = 1; n <= 9; n++) {
      const values = Array.from({ length: n }, () => randomBytes(32));
      const root = merkleRoot(values);
      values.forEach((value, i) => {
        assert.deepEqual(merkleRootFromProof(value, BigInt(i), BigInt(n), proofOf(values, i)), root);
      });
    }
  });

  test("a proof with a sibling too many or too few, or an index out of range, is malformed", () => {
    const values = [randomBytes(32), randomBytes(32), randomBytes(32)];
    const proof = proofOf(values, 0);
    assert.throws(() => merkleRootFromProof(values[0] as Buffer, 0n, 3n, [...proof, randomBytes(32)]), MerkleProofError);
    assert.throws(() => merkleRootFromProof(values[0] as Buffer, 0n, 3n, proof.slice(1)), MerkleProofError);
    assert.throws(() => merkleRootFromProof(values[0] as Buffer, 3n, 3n, proof), MerkleProofError);
  });
});

describe("TPM structures", () => {
  test("a trailing or missing byte is an error", () => {
    const signature = Buffer.from("0018000b" + "0002" + "0101" + "0002" + "0202", "hex");
    assert.deepEqual(Buffer.from(parseSignature(signature).r), Buffer.of(1, 1));
    assert.throws(() => parseSignature(Buffer.concat([signature, Buffer.of(0)])), StructureError);
    assert.throws(() => parseSignature(signature.subarray(0, -1)), StructureError);
    assert.throws(() => parseSignature(Buffer.from("0014000b00000000", "hex")), /not ECDSA/);
    assert.throws(() => parsePublic(Buffer.from("0002" + "0001", "hex")), /not ECC/);
    assert.throws(() => parseAttest(Buffer.from("ff544347", "hex")), StructureError);
  });
});

describe("keys made here", { skip: opensslMissing }, () => {
  test("the CSR is a PKCS#10 request signed by the new P-256 key", () => {
    const { csrPem, keyPem } = newKeyAndCsr("alice");
    const text = execFileSync("openssl", ["req", "-verify", "-noout", "-text"], {
      input: csrPem,
      stdio: ["pipe", "pipe", "ignore"],
    }).toString();
    assert.match(text, /Subject: CN\s*=\s*alice/);
    assert.match(text, /NIST CURVE: P-256|prime256v1/);
    assert.match(keyPem, /BEGIN PRIVATE KEY/);
  });
});

describe("the enclave pin", { skip: opensslMissing }, () => {
  let dir: string;
  const pem = (name: string): string => readFileSync(join(dir, name), "utf8");

  before(() => {
    // One CA, two server certificates for the same name, and a client certificate.
    dir = mkdtempSync(join(tmpdir(), "licensing-ts-pin-"));
    const run = (...args: string[]): void => {
      execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
    };
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Test CA", "-days", "1");
    writeFileSync(join(dir, "server.ext"), "subjectAltName=DNS:enclave.test\nextendedKeyUsage=serverAuth\n");
    writeFileSync(join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n");
    for (const [name, ext] of [
      ["a", "server.ext"],
      ["b", "server.ext"],
      ["client", "client.ext"],
    ] as const) {
      run("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
      run("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", `${name}.pem`);
    }
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  /** How many requests reached a server presenting `name`'s certificate, calling it pinned to `pinned`. */
  async function requestsReaching(name: string, pinned: string): Promise<{ requests: number; error: unknown }> {
    const server = createSecureServer({ cert: pem(`${name}.pem`), key: pem(`${name}.key`) });
    let requests = 0;
    server.on("stream", (stream) => {
      requests += 1;
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "12" }, { endStream: true });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const channel = pinnedChannel(
      `127.0.0.1:${port}`,
      pem(`${pinned}.pem`),
      { certPem: pem("client.pem"), keyPem: pem("client.key") },
      "enclave.test",
    );
    let error: unknown;
    try {
      await createClient(WorkloadService, channel.transport).getIdentity({}, { headers: { authorization: "Bearer t" } });
    } catch (e) {
      error = e;
    } finally {
      channel.close();
      server.close();
    }
    return { requests, error };
  }

  test("the pinned certificate itself is accepted", async () => {
    const { requests, error } = await requestsReaching("a", "a");
    assert.equal(requests, 1);
    assert.match(String(error), /unimplemented/i); // the server's answer, over the pinned TLS
  });

  test("another certificate of the same CA, for the same name, gets no request", async () => {
    const { requests, error } = await requestsReaching("b", "a");
    assert.equal(requests, 0);
    assert.doesNotMatch(String(error), /unimplemented/i);
  });
});
