/**
 * The few TPM 2.0 structures a verifier reads (TPM 2.0 Part 2), decoded here so the
 * client needs no TSS library. Strict, as the Python client's parser: a missing or
 * trailing byte is an error.
 */

export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;
export const TPM_ALG_SHA256 = 0x000b;
export const TPM_ALG_ECC = 0x0023;
export const TPM_ALG_ECDSA = 0x0018;
export const TPM_ALG_NULL = 0x0010;
export const TPM_ECC_NIST_P256 = 0x0003;

export const ATTR_FIXED_TPM = 0x00000002;
export const ATTR_FIXED_PARENT = 0x00000010;
export const ATTR_SENSITIVE_DATA_ORIGIN = 0x00000020;
export const ATTR_USER_WITH_AUTH = 0x00000040;
export const ATTR_RESTRICTED = 0x00010000;
export const ATTR_DECRYPT = 0x00020000;
export const ATTR_SIGN_ENCRYPT = 0x00040000;

/** The bytes are not the TPM structure they claim to be. */
export class StructureError extends Error {
  override name = "StructureError";
}

class Reader {
  private at = 0;

  constructor(private readonly data: Uint8Array) {}

  take(n: number): Uint8Array {
    if (n < 0 || this.at + n > this.data.length) {
      throw new StructureError("truncated structure");
    }
    const chunk = this.data.subarray(this.at, this.at + n);
    this.at += n;
    return chunk;
  }

  u8(): number {
    return this.take(1)[0] as number;
  }

  u16(): number {
    const b = this.take(2);
    return ((b[0] as number) << 8) | (b[1] as number);
  }

  u32(): number {
    const b = this.take(4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0);
  }

  u64(): bigint {
    const b = this.take(8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0);
  }

  sized(): Uint8Array {
    return this.take(this.u16());
  }

  end(): void {
    if (this.at !== this.data.length) {
      throw new StructureError("trailing bytes after structure");
    }
  }
}

export interface PcrSelection {
  hashAlg: number;
  pcrs: number[];
}

export interface Attest {
  magic: number;
  type: number;
  qualifiedSigner: Uint8Array;
  extraData: Uint8Array;
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
  firmwareVersion: bigint;
  pcrSelections: PcrSelection[];
  pcrDigest: Uint8Array;
}

/** TPMS_ATTEST (the quote bytes that the AK signed). */
export function parseAttest(data: Uint8Array): Attest {
  const r = new Reader(data);
  const magic = r.u32();
  const type = r.u16();
  const qualifiedSigner = r.sized();
  const extraData = r.sized();
  const clock = r.u64();
  const resetCount = r.u32();
  const restartCount = r.u32();
  const safe = r.u8() !== 0;
  const firmwareVersion = r.u64();
  const head = { magic, type, qualifiedSigner, extraData, clock, resetCount, restartCount, safe, firmwareVersion };
  if (type !== TPM_ST_ATTEST_QUOTE) {
    // Other attestation types have other bodies; the caller reports the type.
    return { ...head, pcrSelections: [], pcrDigest: new Uint8Array() };
  }
  const pcrSelections: PcrSelection[] = [];
  for (let count = r.u32(), i = 0; i < count; i++) {
    const hashAlg = r.u16();
    const bitmap = r.take(r.u8());
    const pcrs: number[] = [];
    bitmap.forEach((bits, byte) => {
      for (let bit = 0; bit < 8; bit++) {
        if (bits & (1 << bit)) pcrs.push(byte * 8 + bit);
      }
    });
    pcrSelections.push({ hashAlg, pcrs });
  }
  const pcrDigest = r.sized();
  r.end();
  return { ...head, pcrSelections, pcrDigest };
}

export interface EcdsaSignature {
  sigAlg: number;
  hashAlg: number;
  /** Big-endian, as the TPM sent them (leading zeros possible). */
  r: Uint8Array;
  s: Uint8Array;
}

/** TPMT_SIGNATURE; only ECDSA is accepted (that is what our AK makes). */
export function parseSignature(data: Uint8Array): EcdsaSignature {
  const reader = new Reader(data);
  const sigAlg = reader.u16();
  if (sigAlg !== TPM_ALG_ECDSA) {
    throw new StructureError(`signature algorithm 0x${hex4(sigAlg)} is not ECDSA`);
  }
  const hashAlg = reader.u16();
  const r = reader.sized();
  const s = reader.sized();
  reader.end();
  return { sigAlg, hashAlg, r, s };
}

export interface EccPublicArea {
  nameAlg: number;
  attributes: number;
  authPolicy: Uint8Array;
  symmetricAlg: number;
  scheme: number;
  schemeHash: number;
  curve: number;
  x: Uint8Array;
  y: Uint8Array;
  /** The TPMT_PUBLIC bytes, from which the TPM name is computed. */
  raw: Uint8Array;
}

/** TPM2B_PUBLIC of an ECC key (the attestation key). */
export function parsePublic(data: Uint8Array): EccPublicArea {
  const outer = new Reader(data);
  const raw = outer.sized();
  outer.end();
  const r = new Reader(raw);
  const kind = r.u16();
  if (kind !== TPM_ALG_ECC) {
    throw new StructureError(`key type 0x${hex4(kind)} is not ECC`);
  }
  const nameAlg = r.u16();
  const attributes = r.u32();
  const authPolicy = r.sized();
  const symmetricAlg = r.u16();
  if (symmetricAlg !== TPM_ALG_NULL) {
    r.u16(); // keyBits
    r.u16(); // mode
  }
  const scheme = r.u16();
  const schemeHash = scheme !== TPM_ALG_NULL ? r.u16() : TPM_ALG_NULL;
  const curve = r.u16();
  const kdf = r.u16();
  if (kdf !== TPM_ALG_NULL) r.u16();
  const x = r.sized();
  const y = r.sized();
  r.end();
  return { nameAlg, attributes, authPolicy, symmetricAlg, scheme, schemeHash, curve, x, y, raw };
}

export function hex4(value: number): string {
  return value.toString(16).padStart(4, "0");
}

export function hex8(value: number): string {
  return value.toString(16).padStart(8, "0");
}
