/**
 * The shared attestation vectors (clients/testdata/attestation-vectors.json, made from swtpm):
 * every vector must get the same verdict, and the same failed check, as from the Python
 * verifier. LICENSING_ATTESTATION_VECTORS names another file.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";

import { fromJson, type JsonValue } from "@bufbuild/protobuf";

import { AttestationError, AttestationSchema, CHECKS, trustAnchors, verifyAttestation } from "../src/index.js";

interface Vector {
  name: string;
  description?: string;
  attestation: JsonValue;
  nonce: string;
  expected_certificate_pem: string;
  expected: { valid: true } | { valid: false; failed_check: string };
}

interface VectorFile {
  format: number;
  verify_at: string;
  trusted_ca_pem: string[];
  vectors: Vector[];
}

/** dist/test/ -> clients/testdata/ */
const DEFAULT_PATH = fileURLToPath(new URL("../../../testdata/attestation-vectors.json", import.meta.url));
const path = process.env.LICENSING_ATTESTATION_VECTORS || DEFAULT_PATH;
const file: VectorFile | undefined = existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as VectorFile) : undefined;

describe("shared attestation vectors", { skip: file === undefined ? `no vectors at ${path}` : false }, () => {
  const vectors = file as VectorFile;

  test("the file is format 1 and has a vector that verifies", () => {
    assert.equal(vectors.format, 1);
    assert.ok(vectors.vectors.some((v) => v.expected.valid));
  });

  for (const vector of vectors?.vectors ?? []) {
    test(`${vector.name}: ${vector.expected.valid ? "valid" : `fails ${vector.expected.failed_check}`}`, () => {
      const attestation = fromJson(AttestationSchema, vector.attestation);
      const options = {
        nonce: Buffer.from(vector.nonce, "base64"),
        expectedCertificatePem: vector.expected_certificate_pem,
        trustedCaPem: trustAnchors(vectors.trusted_ca_pem),
        now: new Date(vectors.verify_at),
      };
      if (vector.expected.valid) {
        const report = verifyAttestation(attestation, options);
        assert.deepEqual(
          report.checks.map((c) => c.check),
          [...CHECKS],
        );
        return;
      }
      const failed = vector.expected.failed_check;
      assert.ok((CHECKS as readonly string[]).includes(failed), `unknown check ${failed}`);
      assert.throws(
        () => verifyAttestation(attestation, options),
        (error: unknown) => {
          assert.ok(error instanceof AttestationError, `an AttestationError, not ${String(error)}`);
          assert.equal(error.check, failed, error.message);
          return true;
        },
      );
    });
  }
});
