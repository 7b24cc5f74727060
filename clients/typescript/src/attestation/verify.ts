/**
 * Verifying an enclave attestation before trusting its certificate.
 *
 * Every check of the Python verifier (licensing_client.attestation) runs here in the same
 * order under the same name; the first failure throws AttestationError naming it, and the
 * caller must then not connect.
 */
import { X509Certificate, createPublicKey, timingSafeEqual, verify, type KeyObject } from "node:crypto";

import type { Attestation } from "../gen/licensing/v1/attestation_pb.js";
import {
  AK_CERTIFICATE_IDENTITY,
  MEASUREMENT_PCR,
  MerkleProofError,
  merkleRootFromProof,
  qualifyingValue,
  sha256,
} from "./binding.js";
import {
  ATTR_DECRYPT,
  ATTR_FIXED_PARENT,
  ATTR_FIXED_TPM,
  ATTR_RESTRICTED,
  ATTR_SENSITIVE_DATA_ORIGIN,
  ATTR_SIGN_ENCRYPT,
  StructureError,
  TPM_ALG_ECDSA,
  TPM_ALG_SHA256,
  TPM_ECC_NIST_P256,
  TPM_GENERATED_VALUE,
  TPM_ST_ATTEST_QUOTE,
  hex4,
  hex8,
  parseAttest,
  parsePublic,
  parseSignature,
} from "./tpm.js";

/** The checks, in the order they run (the same names as the Python verifier's). */
export const CHECKS = [
  "magic",
  "type",
  "ak_attributes",
  "ak_certificate_chain",
  "signature",
  "certificate",
  "qualifying_data",
  "pcr_digest",
  "event_log",
  "measurement_proof",
] as const;
export type Check = (typeof CHECKS)[number];

/** The attestation failed `check`; do not connect to the enclave. */
export class AttestationError extends Error {
  override name = "AttestationError";

  constructor(
    readonly check: Check,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`attestation check '${check}' failed: ${detail}`, options);
  }
}

export interface CheckResult {
  check: Check;
  detail: string;
}

export interface VerificationReport {
  enclaveCertificateSha256: Buffer;
  resetCount: number;
  pcrValues: Map<number, Buffer>;
  checks: CheckResult[];
}

export interface VerifyOptions {
  /** The nonce *we* sent (never taken from the attestation). */
  nonce: Uint8Array;
  /** The certificate we are about to pin (never taken from the attestation). */
  expectedCertificatePem: string;
  /** The licensing CA certificates, one PEM each (see trustAnchors). */
  trustedCaPem: readonly string[];
  /** When to check certificate validity; now if absent. */
  now?: Date;
}

const ZERO = Buffer.alloc(32);

function fail(check: Check, detail: string, cause?: unknown): AttestationError {
  return new AttestationError(check, detail, cause === undefined ? undefined : { cause });
}

/** Constant-time equality that is false (not an error) for different lengths. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Parsed certificates by PEM text, bounded: a client verifies attestation after attestation
 * under the same CA and AK chain, and parsing a certificate costs more than checking its
 * signature. Only the parse is reused; every check still runs each time.
 */
const PARSED = new Map<string, X509Certificate>();
const PARSED_MAX = 64;

function parseCertificate(pem: string): X509Certificate {
  let certificate = PARSED.get(pem);
  if (certificate === undefined) {
    certificate = new X509Certificate(pem);
    if (PARSED.size >= PARSED_MAX) PARSED.delete(PARSED.keys().next().value as string);
    PARSED.set(pem, certificate);
  }
  return certificate;
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Every certificate of PEM bundles, each as its own PEM (a CA file may hold a rotation). */
export function trustAnchors(pem: string | Buffer | readonly string[]): string[] {
  const bundles = typeof pem === "string" || Buffer.isBuffer(pem) ? [pem.toString()] : pem;
  const anchors: string[] = [];
  for (const bundle of bundles) {
    const blocks = bundle.match(PEM_BLOCK) ?? [];
    if (blocks.length === 0) throw new Error("no certificate in the PEM bundle");
    for (const block of blocks) anchors.push(new X509Certificate(block).toString());
  }
  return anchors;
}

function uriNames(certificate: X509Certificate): string[] {
  // Node prints the SAN as "URI:a, DNS:b"; values with separators in them are quoted.
  const san = certificate.subjectAltName;
  if (san === undefined) return [];
  return san
    .split(", ")
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => entry.slice(4).replace(/^"(.*)"$/, "$1"));
}

function spki(key: KeyObject): Buffer {
  return key.export({ type: "spki", format: "der" });
}

/** As Python's verify_directly_issued_by: the issuer's name and its signature, nothing more. */
function directlyIssued(child: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return child.issuer === issuer.subject && child.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function checkChain(chainPem: readonly string[], trustedPem: readonly string[], akKey: KeyObject, now: Date): string {
  const check = "ak_certificate_chain";
  let chain: X509Certificate[];
  let anchors: X509Certificate[];
  try {
    chain = chainPem.map(parseCertificate);
    anchors = trustedPem.map(parseCertificate);
  } catch (error) {
    throw fail(check, "a certificate does not parse", error);
  }
  const leaf = chain[0];
  if (leaf === undefined) throw fail(check, "no AK certificate");
  const uris = uriNames(leaf);
  if (uris.length !== 1 || uris[0] !== AK_CERTIFICATE_IDENTITY) {
    throw fail(check, "the leaf is not an attestation key certificate");
  }
  if (leaf.publicKey.asymmetricKeyType !== "ec" || !sameBytes(spki(leaf.publicKey), spki(akKey))) {
    throw fail(check, "the AK certificate is for another key");
  }
  for (const certificate of chain) {
    if (!(new Date(certificate.validFrom) <= now && now <= new Date(certificate.validTo))) {
      throw fail(check, "a certificate is outside its validity");
    }
  }
  let current = leaf;
  for (const issuer of [...chain.slice(1), undefined]) {
    for (const anchor of anchors) {
      if (directlyIssued(current, anchor)) {
        return `issued by trusted CA '${anchor.subject.replace(/\n/g, ",")}'`;
      }
    }
    if (issuer === undefined) break;
    if (!directlyIssued(current, issuer)) throw fail(check, "the chain is broken");
    current = issuer;
  }
  throw fail(check, "the AK certificate does not chain to a trusted CA");
}

function pemDer(pem: string): Buffer {
  return parseCertificate(pem).raw;
}

/** An unsigned big-endian integer as exactly `size` bytes, or undefined if it is larger. */
function fixedWidth(value: Uint8Array, size: number): Buffer | undefined {
  let start = 0;
  while (start < value.length && value[start] === 0) start++;
  const digits = value.subarray(start);
  if (digits.length > size) return undefined;
  const out = Buffer.alloc(size);
  out.set(digits, size - digits.length);
  return out;
}

function p256Key(x: Uint8Array, y: Uint8Array): KeyObject {
  const fx = fixedWidth(x, 32);
  const fy = fixedWidth(y, 32);
  if (fx === undefined || fy === undefined) throw new Error("coordinate too large");
  return createPublicKey({
    key: { kty: "EC", crv: "P-256", x: fx.toString("base64url"), y: fy.toString("base64url") },
    format: "jwk",
  });
}

/** Check everything; return the report or throw AttestationError naming the failed check. */
export function verifyAttestation(attestation: Attestation, options: VerifyOptions): VerificationReport {
  const now = options.now ?? new Date();
  const results: CheckResult[] = [];

  let attest;
  try {
    attest = parseAttest(attestation.quote);
  } catch (error) {
    if (!(error instanceof StructureError)) throw error;
    throw fail("magic", `the quote does not parse (${error.message})`, error);
  }
  if (attest.magic !== TPM_GENERATED_VALUE) {
    throw fail("magic", `magic is 0x${hex8(attest.magic)}, not TPM_GENERATED`);
  }
  results.push({ check: "magic", detail: "TPM_GENERATED" });
  if (attest.type !== TPM_ST_ATTEST_QUOTE) {
    throw fail("type", `type is 0x${hex4(attest.type)}, not TPM_ST_ATTEST_QUOTE`);
  }
  results.push({ check: "type", detail: "TPM_ST_ATTEST_QUOTE" });

  let ak;
  try {
    ak = parsePublic(attestation.akPublic);
  } catch (error) {
    if (!(error instanceof StructureError)) throw error;
    throw fail("ak_attributes", `the AK public area does not parse (${error.message})`, error);
  }
  const required = ATTR_RESTRICTED | ATTR_SIGN_ENCRYPT | ATTR_FIXED_TPM | ATTR_FIXED_PARENT | ATTR_SENSITIVE_DATA_ORIGIN;
  if ((ak.attributes & required) !== required || (ak.attributes & ATTR_DECRYPT) !== 0) {
    throw fail("ak_attributes", `attributes 0x${hex8(ak.attributes)} are not an AK's`);
  }
  if (ak.curve !== TPM_ECC_NIST_P256 || ak.scheme !== TPM_ALG_ECDSA) {
    throw fail("ak_attributes", "the AK is not an ECDSA P-256 key");
  }
  let akKey: KeyObject;
  try {
    akKey = p256Key(ak.x, ak.y);
  } catch (error) {
    throw fail("ak_attributes", "the AK point is not on P-256", error);
  }
  results.push({ check: "ak_attributes", detail: "restricted, sign, fixedTPM, fixedParent" });

  const chainDetail = checkChain(attestation.akCertificateChainPem, options.trustedCaPem, akKey, now);
  results.push({ check: "ak_certificate_chain", detail: chainDetail });

  let signature;
  try {
    signature = parseSignature(attestation.signature);
  } catch (error) {
    if (!(error instanceof StructureError)) throw error;
    throw fail("signature", `the signature does not parse (${error.message})`, error);
  }
  if (signature.hashAlg !== TPM_ALG_SHA256) throw fail("signature", "the signature is not over SHA-256");
  const r = fixedWidth(signature.r, 32);
  const s = fixedWidth(signature.s, 32);
  const signed =
    r !== undefined &&
    s !== undefined &&
    verify("sha256", attestation.quote, { key: akKey, dsaEncoding: "ieee-p1363" }, Buffer.concat([r, s]));
  if (!signed) throw fail("signature", "the quote's signature does not verify with the AK");
  results.push({ check: "signature", detail: "ECDSA P-256 by the certified AK" });

  let expectedDer: Buffer;
  let attestedDer: Buffer;
  try {
    expectedDer = pemDer(options.expectedCertificatePem);
    attestedDer = pemDer(attestation.enclaveCertificatePem);
  } catch (error) {
    throw fail("certificate", "a certificate does not parse", error);
  }
  const certHash = sha256(expectedDer);
  if (!sameBytes(attestedDer, expectedDer) || !sameBytes(attestation.enclaveCertificateSha256, certHash)) {
    throw fail("certificate", "the attestation is about another certificate");
  }
  results.push({ check: "certificate", detail: `SHA-256 ${certHash.toString("hex")}` });

  let value: Buffer = qualifyingValue(options.nonce, certHash);
  const proof = attestation.merkleProof;
  const leafCount = proof?.leafCount ?? 0n;
  if (proof !== undefined && leafCount > 1n) {
    try {
      value = merkleRootFromProof(value, proof.leafIndex, leafCount, proof.siblings);
    } catch (error) {
      if (!(error instanceof MerkleProofError)) throw error;
      throw fail("qualifying_data", "the Merkle proof is malformed", error);
    }
  }
  if (!sameBytes(attest.extraData, value)) {
    throw fail("qualifying_data", "qualifying data does not bind our nonce to this certificate");
  }
  const batch = proof !== undefined && leafCount > 1n ? ` (leaf ${proof.leafIndex} of ${leafCount})` : "";
  results.push({ check: "qualifying_data", detail: `nonce and certificate bound${batch}` });

  const values = new Map<number, Buffer>();
  for (const v of attestation.pcrValues) values.set(v.pcr, Buffer.from(v.value));
  const selected = attest.pcrSelections.filter((s) => s.hashAlg === TPM_ALG_SHA256).flatMap((s) => s.pcrs);
  const byNumber = (a: number, b: number): number => a - b;
  const returned = [...values.keys()].sort(byNumber);
  const quoted = [...selected].sort(byNumber);
  if (
    attest.pcrSelections.some((s) => s.hashAlg !== TPM_ALG_SHA256) ||
    returned.length !== quoted.length ||
    returned.some((p, i) => p !== quoted[i])
  ) {
    throw fail("pcr_digest", "the returned PCRs are not the quoted selection");
  }
  const digest = sha256(...selected.map((p) => values.get(p) as Buffer));
  if (!sameBytes(digest, attest.pcrDigest)) {
    throw fail("pcr_digest", "the PCR values do not match the quoted digest");
  }
  results.push({ check: "pcr_digest", detail: `PCRs [${selected.join(", ")}]` });

  const measured = values.get(MEASUREMENT_PCR);
  if (measured === undefined) throw fail("event_log", `PCR ${MEASUREMENT_PCR} is not quoted`);
  let replayed: Buffer = ZERO;
  let root: Buffer | undefined;
  const events = [...attestation.eventLog].sort((a, b) => (a.sequence < b.sequence ? -1 : a.sequence > b.sequence ? 1 : 0));
  for (const event of events) {
    if (event.pcr !== MEASUREMENT_PCR) continue;
    root = Buffer.from(event.digest);
    replayed = sha256(replayed, root);
  }
  if (!sameBytes(replayed, measured)) {
    throw fail("event_log", `the event log does not replay to PCR ${MEASUREMENT_PCR}`);
  }
  if (root === undefined) throw fail("event_log", `nothing was measured into PCR ${MEASUREMENT_PCR}`);
  results.push({ check: "event_log", detail: `replays to PCR ${MEASUREMENT_PCR}; set root ${root.toString("hex")}` });

  // The last extend is the root of the tree over the live certificates: the certificate
  // must be one of its leaves.
  const membership = attestation.measurementProof;
  const count = membership?.leafCount ?? 0n;
  if (membership === undefined || count < 1n) {
    throw fail("measurement_proof", "no proof that the certificate was measured");
  }
  let computed: Buffer;
  try {
    computed = merkleRootFromProof(certHash, membership.leafIndex, count, membership.siblings);
  } catch (error) {
    if (!(error instanceof MerkleProofError)) throw error;
    throw fail("measurement_proof", "the measurement proof is malformed", error);
  }
  if (!sameBytes(computed, root)) {
    throw fail("measurement_proof", `the certificate is not in the set measured into PCR ${MEASUREMENT_PCR}`);
  }
  results.push({ check: "measurement_proof", detail: `leaf ${membership.leafIndex} of ${count} live certificates` });
  return { enclaveCertificateSha256: certHash, resetCount: attest.resetCount, pcrValues: values, checks: results };
}
