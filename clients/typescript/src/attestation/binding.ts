/**
 * What the quote's qualifying data commits to: our nonce and the certificate we will pin
 * (licensing_common.binding on the server side).
 *
 * qualifyingData = SHA-256("licensing-attest-v1" || nonce || SHA-256(cert DER)), or, when one
 * quote serves several requests, the root of a Merkle tree over those values (leaves hashed
 * with 0x00, nodes with 0x01, an odd last node promoted).
 */
import { createHash } from "node:crypto";

/** URI SAN the licensing CA puts in the attestation key's certificate, and only there. */
export const AK_CERTIFICATE_IDENTITY = "spiffe://licensing.internal/tpm/attestation-key";
export const MEASUREMENT_PCR = 23;
/** MeasurementEvent.kind of the one PCR 23 event: the root over the live certificates. */
export const MEASURED_SET_KIND = "enclave-certificate-set";
const DOMAIN = Buffer.from("licensing-attest-v1");

export function sha256(...parts: Uint8Array[]): Buffer {
  const hash = createHash("sha256");
  for (const part of parts) hash.update(part);
  return hash.digest();
}

export function qualifyingValue(nonce: Uint8Array, certificateSha256: Uint8Array): Buffer {
  return sha256(DOMAIN, nonce, certificateSha256);
}

const LEAF = Uint8Array.of(0x00);
const NODE = Uint8Array.of(0x01);

/** The proof is malformed (index out of range, too few or too many siblings). */
export class MerkleProofError extends Error {
  override name = "MerkleProofError";
}

/** The root a leaf's sibling path (from the leaf up) leads to. */
export function merkleRootFromProof(
  value: Uint8Array,
  leafIndex: bigint,
  leafCount: bigint,
  siblings: readonly Uint8Array[],
): Buffer {
  if (leafIndex < 0n || leafIndex >= leafCount) {
    throw new MerkleProofError("leaf index out of range");
  }
  let node = sha256(LEAF, value);
  let index = leafIndex;
  let count = leafCount;
  let used = 0;
  const next = (): Uint8Array => {
    const sibling = siblings[used++];
    if (sibling === undefined) throw new MerkleProofError("proof has too few siblings");
    return sibling;
  };
  while (count > 1n) {
    if (index % 2n === 1n) {
      node = sha256(NODE, next(), node);
    } else if (index + 1n < count) {
      node = sha256(NODE, node, next());
    }
    index /= 2n;
    count = (count + 1n) / 2n;
  }
  if (used !== siblings.length) throw new MerkleProofError("proof has extra siblings");
  return node;
}

/** The root over values (for tests and tools; the backend builds the real trees). */
export function merkleRoot(values: readonly Uint8Array[]): Buffer {
  if (values.length === 0) throw new MerkleProofError("no values");
  let level: Buffer[] = values.map((v) => sha256(LEAF, v));
  while (level.length > 1) {
    const upper: Buffer[] = [];
    for (let i = 0; i + 1 < level.length; i += 2) {
      upper.push(sha256(NODE, level[i] as Buffer, level[i + 1] as Buffer));
    }
    if (level.length % 2) upper.push(level[level.length - 1] as Buffer);
    level = upper;
  }
  return level[0] as Buffer;
}
