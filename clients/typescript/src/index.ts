/** The licensing server's TypeScript client: the high-level API, the verifier, the generated messages. */
export {
  ATTESTABLE_PHASES,
  DEFAULT_TIMEOUT_MS,
  EnclaveSession,
  LicensingClient,
  NONCE_BYTES,
  Progress,
  type Account,
  type AttestationEvent,
  type ClientOptions,
  type CreateEvent,
  type CreateOptions,
  type Created,
  type EnclaveAttestation,
  type FetchingAttestation,
  type Identity,
  type Reattested,
  type Reconnecting,
  type Signature,
  type WatchEvent,
} from "./client.js";
export {
  AttestationError,
  CHECKS,
  sameBytes,
  trustAnchors,
  verifyAttestation,
  type Check,
  type CheckResult,
  type VerificationReport,
  type VerifyOptions,
} from "./attestation/verify.js";
export {
  AK_CERTIFICATE_IDENTITY,
  MEASURED_SET_KIND,
  MEASUREMENT_PCR,
  merkleRoot,
  merkleRootFromProof,
  qualifyingValue,
} from "./attestation/binding.js";
export { StructureError, parseAttest, parsePublic, parseSignature } from "./attestation/tpm.js";
export { PinMismatchError, bearer, licensingChannel, pinnedChannel, type Channel, type ClientIdentity } from "./connect.js";
export {
  AttestationFailedError,
  EnclaveFailedError,
  EnclaveNotReadyError,
  LicensingError,
  NotLoggedInError,
  RefreshFailedError,
  SessionEndedError,
  SignatureInvalidError,
  errorInfo,
  phaseName,
  type ErrorInfo,
} from "./errors.js";
export { certificateSha256, newKeyAndCsr, verifySignature, type KeyAndCsr } from "./keys.js";
export { MemorySessionStore, type Session, type SessionStore } from "./session.js";
export { Phase } from "./gen/licensing/v1/enclave_pb.js";
export { AttestationSchema, type Attestation } from "./gen/licensing/v1/attestation_pb.js";
