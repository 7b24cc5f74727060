/**
 * One error hierarchy for the high-level client, and the pacing of rate-limited calls.
 *
 * Everything LicensingClient and EnclaveSession throw is a LicensingError: a refused call
 * carries its gRPC `code` and the `reason` and `metadata` of the google.rpc.ErrorInfo the
 * server attached (and the RetryInfo delay, if any); a lost connection has no code. The
 * original Connect error is `cause`.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

import type { AttestationError } from "./attestation/verify.js";
import { Phase, type Enclave } from "./gen/licensing/v1/enclave_pb.js";

/** A rate-limited call is retried when the server asks for at most this wait, this often. */
export const MAX_RETRY_WAIT_MS = 5_000;
export const RATE_LIMIT_RETRIES = 3;

export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const reader = new BinaryReader(bytes);
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1 && wire === WireType.LengthDelimited) info.reason = reader.string();
    else if (field === 2 && wire === WireType.LengthDelimited) info.domain = reader.string();
    else if (field === 3 && wire === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, w] = entry.tag();
        if (f === 1 && w === WireType.LengthDelimited) key = entry.string();
        else if (f === 2 && w === WireType.LengthDelimited) value = entry.string();
        else entry.skip(w);
      }
      info.metadata[key] = value;
    } else reader.skip(wire);
  }
  return info;
}

/** google.rpc.RetryInfo's retry_delay, in milliseconds. */
function decodeRetryDelayMs(bytes: Uint8Array): number {
  const reader = new BinaryReader(bytes);
  let ms = 0;
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field !== 1 || wire !== WireType.LengthDelimited) {
      reader.skip(wire);
      continue;
    }
    const duration = new BinaryReader(reader.bytes());
    while (duration.pos < duration.len) {
      const [f, w] = duration.tag();
      if (f === 1) ms += Number(duration.int64()) * 1000;
      else if (f === 2) ms += duration.int32() / 1e6;
      else duration.skip(w);
    }
  }
  return ms;
}

function detail(error: ConnectError, type: string): Uint8Array | undefined {
  for (const d of error.details) {
    if ("type" in d && d.type === type && d.value instanceof Uint8Array) return d.value;
  }
  return undefined;
}

/** The google.rpc.ErrorInfo in the status details, if the server sent one. */
export function errorInfo(error: ConnectError): ErrorInfo | undefined {
  const bytes = detail(error, "google.rpc.ErrorInfo");
  return bytes === undefined ? undefined : decodeErrorInfo(bytes);
}

export function reasonOf(error: unknown): string | undefined {
  return error instanceof ConnectError ? errorInfo(error)?.reason || undefined : undefined;
}

/** How long the server asks us to wait, if it refused the call by rate limit (nothing ran). */
export function retryDelayMs(error: unknown): number | undefined {
  if (!(error instanceof ConnectError) || error.code !== Code.ResourceExhausted) return undefined;
  if (reasonOf(error) !== "RATE_LIMITED") return undefined;
  const bytes = detail(error, "google.rpc.RetryInfo");
  return bytes === undefined ? undefined : decodeRetryDelayMs(bytes);
}

export function tokenExpired(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unauthenticated && reasonOf(error) === "TOKEN_EXPIRED";
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** `call()`, waited out and repeated while a rate limit refuses it briefly. */
export async function paced<T>(call: () => Promise<T>): Promise<T> {
  for (let i = 0; i < RATE_LIMIT_RETRIES; i++) {
    try {
      return await call();
    } catch (error) {
      const delay = retryDelayMs(error);
      if (delay === undefined || delay > MAX_RETRY_WAIT_MS) throw error;
      await sleep(delay);
    }
  }
  return call();
}

/** A call failed: the server refused it (`code` set) or could not be reached (undefined). */
export class LicensingError extends Error {
  override name = "LicensingError";
  code: Code | undefined;
  reason: string | undefined;
  metadata: Record<string, string> = {};
  /** The wait the server asked for (google.rpc.RetryInfo), in milliseconds. */
  retryDelayMs: number | undefined;
  /** The address talked to, when known. */
  address = "";

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }

  /** Keeps the status, the ErrorInfo reason and metadata, and the RetryInfo delay. */
  static fromConnect<E extends LicensingError>(
    this: new (message: string, options?: { cause?: unknown }) => E,
    error: ConnectError,
    address = "",
  ): E {
    const wrapped = new this(error.rawMessage.trim() || Code[error.code], { cause: error });
    const info = errorInfo(error);
    wrapped.code = error.code;
    wrapped.reason = info?.reason || undefined;
    wrapped.metadata = info?.metadata ?? {};
    const bytes = detail(error, "google.rpc.RetryInfo");
    wrapped.retryDelayMs = bytes === undefined ? undefined : decodeRetryDelayMs(bytes);
    wrapped.address = address;
    return wrapped;
  }
}

/** No session (never logged in, or the store no longer holds one): call logIn. */
export class NotLoggedInError extends LicensingError {
  override name = "NotLoggedInError";
}

/** The server ended the session (logout, expiry, revocation): only a new logIn helps. */
export class SessionEndedError extends LicensingError {
  override name = "SessionEndedError";
}

/** Refreshing the session failed for a reason that may pass (the session still stands). */
export class RefreshFailedError extends LicensingError {
  override name = "RefreshFailedError";
}

/** The enclave is not running with a certificate (not yet, or no more): nothing to attest. */
export class EnclaveNotReadyError extends LicensingError {
  override name = "EnclaveNotReadyError";

  constructor(readonly enclave: Enclave) {
    super(`enclave ${enclave.id} is not running with a certificate to attest (it is ${phaseName(enclave.phase)})`);
  }
}

/** Provisioning ended FAILED (the server's failure reason is in the message) or DELETED. */
export class EnclaveFailedError extends LicensingError {
  override name = "EnclaveFailedError";

  constructor(
    message: string,
    readonly enclaveId: string,
    readonly phase: Phase,
  ) {
    super(message);
  }
}

/** An attestation did not verify: do not trust the enclave. `error.check` names the check. */
export class AttestationFailedError extends LicensingError {
  override name = "AttestationFailedError";

  constructor(
    readonly error: AttestationError,
    readonly enclaveId: string,
    readonly nonce: Uint8Array | undefined,
    /** "ATTESTED event" or "GetAttestation": where the attestation came from. */
    readonly source: string,
  ) {
    super(`enclave ${enclaveId} failed attestation check '${error.check}': ${error.detail}`, { cause: error });
  }

  get check(): AttestationError["check"] {
    return this.error.check;
  }
}

/** An enclave's signature does not verify against its attested, pinned certificate. */
export class SignatureInvalidError extends LicensingError {
  override name = "SignatureInvalidError";
}

export function phaseName(phase: Phase): string {
  return Phase[phase] !== undefined ? `PHASE_${Phase[phase]}` : `PHASE_${phase}`;
}

/** Connect and transport failures inside become LicensingError (cause kept). */
export async function translated<T>(address: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw translate(error, address);
  }
}

export function translate(error: unknown, address: string): unknown {
  if (error instanceof LicensingError) return error;
  if (error instanceof ConnectError) return LicensingError.fromConnect(error, address);
  if (error instanceof Error && error.name !== "AttestationError") {
    const wrapped = new LicensingError(`talking to ${address || "the server"} failed: ${error.message}`, { cause: error });
    wrapped.address = address;
    return wrapped;
  }
  return error;
}
