/**
 * Channels to the licensing server's listeners and to enclaves: gRPC over HTTP/2 with
 * Connect for Node, TLS verified against the licensing CA only, or pinned to exactly one
 * attested enclave certificate.
 */
import { X509Certificate, createHash } from "node:crypto";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import type { SecureClientSessionOptions } from "node:http2";

import type { Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

/** A transport and the HTTP/2 connection it owns (close it). */
export interface Channel {
  readonly address: string;
  readonly transport: Transport;
  close(): void;
}

/** The certificate and key the client presents (the one issued at Login). */
export interface ClientIdentity {
  certPem: string;
  keyPem: string;
}

export function splitAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(":");
  return { host: address.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(address.slice(at + 1)) };
}

function baseUrl(address: string): string {
  const { host, port } = splitAddress(address);
  return `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

function channel(address: string, nodeOptions: SecureClientSessionOptions): Channel {
  const url = baseUrl(address);
  const sessionManager = new Http2SessionManager(url, { idleConnectionTimeoutMs: 60_000 }, nodeOptions);
  const transport = createGrpcTransport({ baseUrl: url, sessionManager });
  return { address, transport, close: () => sessionManager.abort() };
}

/**
 * TLS verified against `caPem` only (the enrollment listener), or mutual TLS when a
 * client identity is given (the API listener).
 */
export function licensingChannel(address: string, caPem: string, client?: ClientIdentity): Channel {
  return channel(address, {
    ca: caPem,
    minVersion: "TLSv1.2",
    ...(client ? { cert: client.certPem, key: client.keyPem } : {}),
  });
}

/** SHA-256 of a DER certificate, lower-case hex. */
export function derSha256(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

/** The pinned certificate was not the one the endpoint presented. */
export class PinMismatchError extends Error {
  override name = "PinMismatchError";
  readonly code = "ERR_LICENSING_PIN_MISMATCH";
}

/**
 * Mutual TLS to an enclave that trusts exactly one certificate, the attested one.
 *
 * The pinned certificate is the only trust anchor (allowPartialTrustChain lets OpenSSL
 * take a leaf as one), and checkServerIdentity, which runs inside the handshake before
 * any request, also requires the peer's DER to hash to the pinned certificate's. Any
 * other certificate, even one of the same CA for the same name, fails the connection,
 * so nothing (no token) is sent to it. `tlsServerName` is sent as SNI and checked
 * against the pinned certificate's names; empty means the endpoint's host.
 */
export function pinnedChannel(
  endpoint: string,
  pinnedCertificatePem: string,
  client: ClientIdentity,
  tlsServerName = "",
): Channel {
  const pinned = new X509Certificate(pinnedCertificatePem);
  const expected = derSha256(pinned.raw);
  const { host } = splitAddress(endpoint);
  const name = tlsServerName || host;
  const isIp = /^[\d.]+$/.test(name) || name.includes(":");
  return channel(endpoint, {
    ca: pinned.toString(),
    allowPartialTrustChain: true,
    minVersion: "TLSv1.2",
    cert: client.certPem,
    key: client.keyPem,
    ...(isIp ? {} : { servername: name }),
    checkServerIdentity: (_host: string, peer: PeerCertificate): Error | undefined => {
      if (!peer.raw || derSha256(peer.raw) !== expected) {
        return new PinMismatchError(`the enclave at ${endpoint} presented a certificate other than the attested one`);
      }
      return checkServerIdentity(name, peer);
    },
  } as SecureClientSessionOptions);
}

/** Per-call headers carrying the access token. */
export function bearer(accessToken: string): Record<string, string> {
  return { authorization: `Bearer ${accessToken}` };
}
