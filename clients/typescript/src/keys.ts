/**
 * Client keys and certificates: made and checked here; only the CSR leaves.
 *
 * Node's crypto makes the ECDSA P-256 key and signs; the PKCS#10 request around it is a
 * few DER structures (RFC 2986), built below rather than pulled in from a package.
 */
import { X509Certificate, createPrivateKey, generateKeyPairSync, sign, verify } from "node:crypto";

/** A fresh EC P-256 key (PKCS#8 PEM) and a CSR for it. */
export interface KeyAndCsr {
  keyPem: string;
  csrPem: string;
}

function length(n: number): Buffer {
  if (n < 0x80) return Buffer.of(n);
  const bytes: number[] = [];
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, ...content: Uint8Array[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.of(tag), length(body.length), body]);
}

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split(".").map(Number);
  const out = [(a as number) * 40 + (b as number)];
  for (const arc of rest) {
    const groups = [arc & 0x7f];
    for (let v = arc >>> 7; v > 0; v >>>= 7) groups.unshift(0x80 | (v & 0x7f));
    out.push(...groups);
  }
  return tlv(0x06, Buffer.from(out));
}

const SEQUENCE = 0x30;
const SET = 0x31;
const OID_COMMON_NAME = "2.5.4.3";
const OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";

function pem(label: string, der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The server sets the certificate's subject itself; the CN here is a courtesy. */
export function newKeyAndCsr(commonName: string): KeyAndCsr {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const subject = tlv(SEQUENCE, tlv(SET, tlv(SEQUENCE, oid(OID_COMMON_NAME), tlv(0x0c, Buffer.from(commonName)))));
  const info = tlv(
    SEQUENCE,
    tlv(0x02, Buffer.of(0)), // version 1
    subject,
    publicKey.export({ type: "spki", format: "der" }),
    Buffer.of(0xa0, 0x00), // no attributes
  );
  const signature = sign("sha256", info, privateKey); // DER ECDSA-Sig-Value
  const csr = tlv(SEQUENCE, info, tlv(SEQUENCE, oid(OID_ECDSA_WITH_SHA256)), tlv(0x03, Buffer.of(0), signature));
  return {
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    csrPem: pem("CERTIFICATE REQUEST", csr),
  };
}

/** Whether the certificate is for the private key's public half. */
export function sameKey(certificatePem: string, keyPem: string): boolean {
  const certificate = new X509Certificate(certificatePem);
  return certificate.checkPrivateKey(createPrivateKey(keyPem));
}

/** SHA-256 of the certificate's DER (what enclaves report as their identity). */
export function certificateSha256(certificatePem: string): Buffer {
  return Buffer.from(new X509Certificate(certificatePem).fingerprint256.replace(/:/g, ""), "hex");
}

/** Whether `signature` (DER ECDSA over SHA-256, as enclaves sign) by the certificate's key covers `data`. */
export function verifySignature(certificatePem: string, data: Uint8Array, signature: Uint8Array): boolean {
  const key = new X509Certificate(certificatePem).publicKey;
  if (key.asymmetricKeyType !== "ec") return false;
  try {
    return verify("sha256", data, { key, dsaEncoding: "der" }, signature);
  } catch {
    return false;
  }
}

/** The CN of the certificate's subject (the server puts the normalised username there). */
export function commonNameOf(certificatePem: string): string | undefined {
  const subject = new X509Certificate(certificatePem).subject;
  const line = subject.split("\n").find((l) => l.startsWith("CN="));
  return line?.slice(3);
}
