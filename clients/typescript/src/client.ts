/**
 * The high-level client, the same shape as the Python one (licensing_client): sessions that
 * refresh themselves, enclaves created as a stream of progress events, attestations
 * verified here, and enclave sessions pinned to exactly the attested certificate.
 *
 * LicensingClient verifies the licensing server against the CA it is given and nothing
 * else. logIn makes the private key and CSR here (only the CSR is sent). Before each call
 * the access token is refreshed if it expires within a minute (with a new key and
 * certificate if the certificate expires within an hour), and a call answered
 * UNAUTHENTICATED / TOKEN_EXPIRED is refreshed and retried once. A brief rate limit is
 * waited out. openEnclave verifies a fresh TPM attestation before any connection to the
 * enclave exists. Everything thrown is a LicensingError.
 */
import { randomBytes, randomUUID } from "node:crypto";

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import { AttestationError, trustAnchors, verifyAttestation, type VerificationReport } from "./attestation/verify.js";
import { bearer, licensingChannel, pinnedChannel, type Channel } from "./connect.js";
import {
  AttestationFailedError,
  EnclaveFailedError,
  EnclaveNotReadyError,
  LicensingError,
  NotLoggedInError,
  RefreshFailedError,
  SessionEndedError,
  SignatureInvalidError,
  paced,
  reasonOf,
  tokenExpired,
  translate,
  translated,
} from "./errors.js";
import { WorkloadService } from "./gen/enclave/v1/workload_pb.js";
import { AttestationService, type Attestation } from "./gen/licensing/v1/attestation_pb.js";
import { AuthService, type User } from "./gen/licensing/v1/auth_pb.js";
import {
  EnclaveService,
  Phase,
  type CreateEnclaveResponse,
  type Enclave,
  type WatchEnclaveResponse,
} from "./gen/licensing/v1/enclave_pb.js";
import { certificateSha256, commonNameOf, newKeyAndCsr, sameKey, verifySignature } from "./keys.js";
import { MemorySessionStore, type Session, type SessionStore } from "./session.js";

/** The nonce we send with every attestation request: fresh random bytes each time. */
export const NONCE_BYTES = 32;
export const DEFAULT_TIMEOUT_MS = 30_000;
const ACCESS_TOKEN_MARGIN_MS = 60_000;
const CERTIFICATE_MARGIN_MS = 3_600_000;
/** Reconnects of a stream in a row without a new event before giving up. */
export const STREAM_RETRIES = 5;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 8_000;

/** Refresh failures after which only a new login helps. */
const SESSION_OVER = new Set([
  "REFRESH_TOKEN_INVALID",
  "REFRESH_TOKEN_EXPIRED",
  "REFRESH_TOKEN_REUSED",
  "SESSION_REVOKED",
  "USER_NOT_FOUND",
]);
/** Phases in which an enclave runs with its certificate (the server quotes only these). */
export const ATTESTABLE_PHASES: ReadonlySet<Phase> = new Set([Phase.READY, Phase.ATTESTING, Phase.ATTESTED]);
/** Phases after which a create or watch stream has said all it will. */
const SETTLED_PHASES: ReadonlySet<Phase> = new Set([Phase.ATTESTED, Phase.FAILED, Phase.DELETED]);

type PhaseEvent = CreateEnclaveResponse | WatchEnclaveResponse;
type Headers = Record<string, string>;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const dateOf = (ts: Timestamp | undefined): Date => (ts ? timestampDate(ts) : new Date(0));

// Events ----------------------------------------------------------------------------

/** One phase event of an enclave (`event` is the server's message as it came). */
export class Progress {
  readonly kind = "progress";

  constructor(readonly event: PhaseEvent) {}

  get enclaveId(): string {
    return this.event.enclaveId;
  }
  get phase(): Phase {
    return this.event.phase;
  }
  get message(): string {
    return this.event.message;
  }
  get sequence(): bigint {
    return this.event.sequence;
  }
  get enclave(): Enclave | undefined {
    return this.event.enclave?.id ? this.event.enclave : undefined;
  }
  /** Only the ATTESTED event carries one. */
  get attestation(): Attestation | undefined {
    return this.event.attestation?.quote.length ? this.event.attestation : undefined;
  }
}

/** The stream dropped (`error`); it is reopened from `fromSequence` after `delayMs`. */
export interface Reconnecting {
  kind: "reconnecting";
  error: unknown;
  attempt: number;
  attempts: number;
  delayMs: number;
  fromSequence: bigint;
}

/** The events brought no attestation over our nonce (`why`); a fresh one is fetched. */
export interface FetchingAttestation {
  kind: "fetching-attestation";
  enclaveId: string;
  why: string;
}

/** A verified attestation: the enclave as reported, our nonce, the attestation and the report. */
export interface EnclaveAttestation {
  enclave: Enclave;
  nonce: Uint8Array;
  attestation: Attestation;
  report: VerificationReport;
}

/** The last event of createEnclave: the enclave and its verified attestation (undefined only with verify: false). */
export interface Created {
  kind: "created";
  enclave: Enclave;
  attestation: EnclaveAttestation | undefined;
  /** "ATTESTED event" or "GetAttestation". */
  source: string;
}

/**
 * One re-attestation round's evidence, verified against the certificate pinned when
 * followAttestations began; `requested` when it binds the nonce this client asked for.
 */
export interface Reattested {
  kind: "reattested";
  progress: Progress;
  round: bigint;
  attestation: EnclaveAttestation;
  requested: boolean;
}

export type CreateEvent = Progress | Reconnecting | FetchingAttestation | Created;
export type WatchEvent = Progress | Reconnecting;
export type AttestationEvent = Progress | Reconnecting | Reattested;

/** What a phase stream showed so far; replays (an event seen twice) are dropped. */
class Follow {
  lastSequence = 0n;
  last: Progress | undefined;
  enclave: Enclave | undefined;
  attestation: Attestation | undefined;
  attempts = 0;

  constructor(public enclaveId = "") {}

  see(event: PhaseEvent): Progress | undefined {
    if (event.sequence && event.sequence <= this.lastSequence) return undefined;
    const progress = new Progress(event);
    if (event.sequence > this.lastSequence) this.lastSequence = event.sequence;
    this.enclaveId = event.enclaveId || this.enclaveId;
    this.last = progress;
    this.enclave = progress.enclave ?? this.enclave;
    this.attestation = progress.attestation ?? this.attestation;
    this.attempts = 0;
    return progress;
  }
}

function isTransient(error: unknown): boolean {
  if (error instanceof ConnectError) return error.code === Code.Unavailable;
  return false;
}

// Results ---------------------------------------------------------------------------

export interface Account {
  userId: string;
  username: string;
}

/** GetIdentity of an enclave, and whether it names the certificate we pinned. */
export interface Identity {
  enclaveId: string;
  owner: string;
  certificateSha256: Uint8Array;
  certificatePem: string;
  matchesPinnedCertificate: boolean;
}

/** A signature verified here against the attested, pinned certificate of the enclave. */
export interface Signature {
  signature: Uint8Array;
  certificatePem: string;
}

export interface ClientOptions {
  /** The trusted licensing CA (PEM bundle, or several). */
  caPem: string | Buffer | readonly string[];
  store?: SessionStore;
  rpcTimeoutMs?: number;
  clock?: () => Date;
}

export interface CreateOptions {
  /** Idempotency key; a new one if absent. */
  requestId?: string;
  /** Random if absent. */
  nonce?: Uint8Array;
  /** Verify the attestation (default true). */
  verify?: boolean;
}

// The client ------------------------------------------------------------------------

/** A user's client of one licensing server; close() it when done. */
export class LicensingClient {
  /** The trusted licensing CA, one PEM a certificate. */
  readonly caAnchors: string[];
  readonly store: SessionStore;
  readonly rpcTimeoutMs: number;
  private readonly clock: () => Date;
  private current: Session | undefined;
  private refreshing: Promise<unknown> = Promise.resolve();
  private enrollment: Channel | undefined;
  private api: Channel | undefined;
  private readonly enclaves = new Map<string, Channel>();

  constructor(
    readonly enrollAddr: string,
    readonly apiAddr: string,
    options: ClientOptions,
  ) {
    this.caAnchors = trustAnchors(options.caPem);
    this.store = options.store ?? new MemorySessionStore();
    this.rpcTimeoutMs = options.rpcTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.clock = options.clock ?? (() => new Date());
  }

  close(): void {
    this.enrollment?.close();
    this.enrollment = undefined;
    this.resetChannels();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // Channels --------------------------------------------------------------------
  private caPem(): string {
    return this.caAnchors.join("");
  }

  private enroll<S extends DescService>(service: S): Client<S> {
    this.enrollment ??= licensingChannel(this.enrollAddr, this.caPem());
    return createClient(service, this.enrollment.transport);
  }

  private apiChannel(): Channel {
    if (this.api === undefined) {
      const session = this.session;
      this.api = licensingChannel(this.apiAddr, this.caPem(), {
        certPem: session.clientCertificatePem,
        keyPem: session.clientKeyPem,
      });
    }
    return this.api;
  }

  /** Mutual TLS to an attested enclave, trusting only its attested certificate. */
  enclaveChannel(enclave: Enclave): Channel {
    let channel = this.enclaves.get(enclave.id);
    if (channel === undefined) {
      const session = this.session;
      channel = pinnedChannel(
        enclave.endpoint,
        enclave.certificatePem,
        { certPem: session.clientCertificatePem, keyPem: session.clientKeyPem },
        enclave.tlsServerName,
      );
      this.enclaves.set(enclave.id, channel);
    }
    return channel;
  }

  /** Drop the channels that present the client certificate (it changed, or broke). */
  resetChannels(): void {
    this.api?.close();
    this.api = undefined;
    for (const channel of this.enclaves.values()) channel.close();
    this.enclaves.clear();
  }

  private options(headers?: Headers): { timeoutMs: number; headers?: Headers } {
    return headers ? { timeoutMs: this.rpcTimeoutMs, headers } : { timeoutMs: this.rpcTimeoutMs };
  }

  // Accounts --------------------------------------------------------------------
  async signUp(username: string, password: string): Promise<Account> {
    const reply = await translated(this.enrollAddr, () =>
      this.enroll(AuthService).signUp({ username, password }, this.options()),
    );
    return { userId: reply.userId, username: reply.username };
  }

  /** Log in with a key and CSR made here; the session is saved in the store. */
  async logIn(username: string, password: string): Promise<Session> {
    const fresh = newKeyAndCsr(username); // the private key stays here; only the CSR is sent
    const reply = await translated(this.enrollAddr, () =>
      this.enroll(AuthService).login({ username, password, csrPem: fresh.csrPem }, this.options()),
    );
    let matches: boolean;
    try {
      matches = sameKey(reply.clientCertificatePem, fresh.keyPem);
    } catch (error) {
      throw new LicensingError("the server sent an unreadable client certificate", { cause: error });
    }
    if (!matches) throw new LicensingError("the certificate the server issued is not for our key");
    const session: Session = {
      username: commonNameOf(reply.clientCertificatePem) ?? username,
      userId: reply.userId,
      accessToken: reply.accessToken,
      accessTokenExpireTime: dateOf(reply.accessTokenExpireTime),
      refreshToken: reply.refreshToken,
      refreshTokenExpireTime: dateOf(reply.refreshTokenExpireTime),
      clientCertificatePem: reply.clientCertificatePem,
      clientKeyPem: fresh.keyPem,
      clientCertificateExpireTime: dateOf(reply.clientCertificateExpireTime),
    };
    await this.store.withLock(async () => this.store.save(session));
    this.adopt(session);
    return session;
  }

  /** End the session on the server. */
  async logOut(): Promise<void> {
    await this.unary((headers) => createClient(AuthService, this.apiChannel().transport).logout({}, this.options(headers)));
  }

  async currentUser(): Promise<User | undefined> {
    const reply = await this.unary((headers) =>
      createClient(AuthService, this.apiChannel().transport).getCurrentUser({}, this.options(headers)),
    );
    return reply.user;
  }

  // The session -----------------------------------------------------------------
  /** The current session (from the store on first use); NotLoggedInError if none. */
  get session(): Session {
    if (this.current === undefined) {
      const stored = this.store.load();
      if (stored === undefined) throw new NotLoggedInError("not logged in");
      this.current = stored;
    }
    return this.current;
  }

  private adopt(session: Session): void {
    const previous = this.current;
    this.current = session;
    if (previous !== undefined && previous.clientCertificatePem !== session.clientCertificatePem) {
      this.resetChannels();
    }
  }

  private needs(session: Session): { refresh: boolean; renew: boolean } {
    const now = this.clock().getTime();
    const renew = session.clientCertificateExpireTime.getTime() - now < CERTIFICATE_MARGIN_MS;
    const refresh = renew || session.accessTokenExpireTime.getTime() - now < ACCESS_TOKEN_MARGIN_MS;
    return { refresh, renew };
  }

  /** The session, refreshed first if its token (or certificate) is about to expire. */
  async ensureFresh(): Promise<Session> {
    const session = this.session;
    const { refresh, renew } = this.needs(session);
    return refresh ? this.refreshFrom(session, renew) : session;
  }

  /** Rotate the tokens now (and the key and certificate if asked). */
  async refresh(options: { renewCertificate?: boolean } = {}): Promise<Session> {
    return this.refreshFrom(this.session, options.renewCertificate ?? false);
  }

  /** Rotate the session `used` was, unless someone already did (read again under the lock). */
  private refreshFrom(used: Session, renewCertificate: boolean): Promise<Session> {
    const run = this.refreshing.then(() =>
      this.store.withLock(async () => {
        const stored = this.store.load();
        if (stored === undefined) throw new NotLoggedInError("not logged in (the session was removed)");
        let renew = renewCertificate;
        if (stored.refreshToken !== used.refreshToken) {
          this.adopt(stored);
          const needs = this.needs(stored);
          if (!needs.refresh) return stored;
          renew = needs.renew;
        }
        if (stored.refreshTokenExpireTime.getTime() <= this.clock().getTime()) {
          throw new SessionEndedError("the session expired");
        }
        return this.rotate(stored, renew);
      }),
    );
    this.refreshing = run.catch(() => undefined);
    return run;
  }

  private async rotate(stored: Session, renewCertificate: boolean): Promise<Session> {
    const fresh = renewCertificate ? newKeyAndCsr(stored.username) : undefined;
    let reply;
    try {
      reply = await this.enroll(AuthService).refreshToken(
        { refreshToken: stored.refreshToken, csrPem: fresh?.csrPem ?? "" },
        this.options(),
      );
    } catch (error) {
      if (error instanceof ConnectError) {
        const kind = SESSION_OVER.has(reasonOf(error) ?? "") ? SessionEndedError : RefreshFailedError;
        throw kind.fromConnect(error, this.enrollAddr);
      }
      throw new RefreshFailedError(`refreshing at ${this.enrollAddr} failed: ${String(error)}`, { cause: error });
    }
    let session: Session = {
      ...stored,
      accessToken: reply.accessToken,
      accessTokenExpireTime: dateOf(reply.accessTokenExpireTime),
      refreshToken: reply.refreshToken,
      refreshTokenExpireTime: reply.refreshTokenExpireTime
        ? dateOf(reply.refreshTokenExpireTime)
        : stored.refreshTokenExpireTime,
    };
    if (fresh !== undefined) {
      if (!reply.clientCertificatePem) throw new RefreshFailedError("the server issued no new certificate");
      session = {
        ...session,
        clientCertificatePem: reply.clientCertificatePem,
        clientKeyPem: fresh.keyPem,
        clientCertificateExpireTime: dateOf(reply.clientCertificateExpireTime),
      };
    }
    this.store.save(session);
    this.adopt(session);
    return session;
  }

  // Calls -----------------------------------------------------------------------
  /**
   * `fn(headers)` with a fresh token: retried once after a refresh if the server says the
   * token expired, and after the wait a rate limit asks for. Errors become LicensingError.
   */
  async unary<T>(fn: (headers: Headers) => Promise<T>, address = this.apiAddr): Promise<T> {
    return translated(address, async () => {
      const used = await this.ensureFresh();
      try {
        return await paced(() => fn(bearer(used.accessToken)));
      } catch (error) {
        if (!tokenExpired(error)) throw error;
      }
      const fresh = await this.refreshFrom(used, false);
      return paced(() => fn(bearer(fresh.accessToken)));
    });
  }

  /** A server stream on the API; restarted once if the token expired before any message. */
  private async *stream<T>(fn: (headers: Headers) => AsyncIterable<T>): AsyncGenerator<T> {
    const used = await this.ensureFresh();
    let started = false;
    try {
      for await (const item of fn(bearer(used.accessToken))) {
        started = true;
        yield item;
      }
      return;
    } catch (error) {
      // Only an expiry answered before anything arrived: the call did nothing yet.
      if (started || !tokenExpired(error)) throw error;
    }
    const fresh = await this.refreshFrom(used, false);
    yield* fn(bearer(fresh.accessToken));
  }

  /** Phase events, the stream reopened where it left off when it drops (Unavailable). */
  private async *follow(
    state: Follow,
    reopen: () => AsyncIterable<PhaseEvent>,
    settled: ReadonlySet<Phase> = SETTLED_PHASES,
  ): AsyncGenerator<WatchEvent> {
    for (;;) {
      try {
        for await (const event of reopen()) {
          const progress = state.see(event);
          if (progress !== undefined) yield progress;
        }
        return;
      } catch (error) {
        // The stream broke after its final event: nothing is missing.
        if (state.last !== undefined && settled.has(state.last.phase)) return;
        if (!isTransient(error) || state.attempts >= STREAM_RETRIES) throw error;
        state.attempts += 1;
        const delayMs =
          Math.min(BACKOFF_FIRST_MS * 2 ** (state.attempts - 1), BACKOFF_MAX_MS) * (0.8 + Math.random() * 0.4);
        yield {
          kind: "reconnecting",
          error,
          attempt: state.attempts,
          attempts: STREAM_RETRIES,
          delayMs,
          fromSequence: state.lastSequence,
        };
        this.resetChannels();
        await sleep(delayMs);
      }
    }
  }

  private watchStream(state: Follow): AsyncIterable<PhaseEvent> {
    return this.stream((headers) =>
      createClient(EnclaveService, this.apiChannel().transport).watchEnclave(
        { enclaveId: state.enclaveId, fromSequence: state.lastSequence },
        { headers },
      ),
    );
  }

  // Enclaves --------------------------------------------------------------------
  /**
   * Create an enclave: its progress events, ending in Created.
   *
   * Idempotent by requestId. A dropped stream is resumed (Reconnecting). With verify (the
   * default) the attestation is verified against the nonce, the enclave's certificate
   * and the trusted CA; a repeated create replays the first request's events, over that
   * request's nonce, so then a fresh attestation is fetched (FetchingAttestation).
   * Throws EnclaveFailedError (FAILED, DELETED) and AttestationFailedError.
   */
  async *createEnclave(options: CreateOptions = {}): AsyncGenerator<CreateEvent> {
    const request = {
      requestId: options.requestId ?? randomUUID(),
      nonce: options.nonce ?? randomBytes(NONCE_BYTES),
    };
    const state = new Follow();
    // Until the enclave has an id, CreateEnclave again (idempotent by request id); after
    // that, resume its events with WatchEnclave.
    const reopen = (): AsyncIterable<PhaseEvent> =>
      state.enclaveId
        ? this.watchStream(state)
        : this.stream((headers) =>
            createClient(EnclaveService, this.apiChannel().transport).createEnclave(request, { headers }),
          );
    try {
      yield* this.follow(state, reopen);
    } catch (error) {
      throw translate(error, this.apiAddr);
    }
    const last = state.last;
    if (last === undefined) throw new LicensingError("the server sent no event");
    if (last.phase === Phase.FAILED) {
      const reason = state.enclave?.failureReason || last.message || "no reason was given";
      throw new EnclaveFailedError(
        `enclave ${state.enclaveId} failed: ${reason.replace(/\.$/, "")} (FAILED)`,
        state.enclaveId,
        Phase.FAILED,
      );
    }
    if (last.phase === Phase.DELETED) {
      throw new EnclaveFailedError(
        `enclave ${state.enclaveId} was deleted before it was ready`,
        state.enclaveId,
        Phase.DELETED,
      );
    }
    const enclave = state.enclave ?? (await this.getEnclave(state.enclaveId));
    if (options.verify === false) {
      yield { kind: "created", enclave, attestation: undefined, source: "" };
      return;
    }
    let attestation = state.attestation;
    let source = "ATTESTED event";
    if (attestation === undefined || !Buffer.from(attestation.nonce).equals(Buffer.from(request.nonce))) {
      const why =
        attestation === undefined
          ? "no attestation arrived with the events"
          : "the ATTESTED event is a replay, over the nonce of the first create with this request id";
      yield { kind: "fetching-attestation", enclaveId: enclave.id, why };
      attestation = await this.getAttestation(enclave.id, request.nonce);
      source = "GetAttestation";
    }
    const report = this.verify(attestation, enclave, request.nonce, source);
    yield { kind: "created", enclave, attestation: { enclave, nonce: request.nonce, attestation, report }, source };
  }

  private verify(attestation: Attestation, enclave: Enclave, nonce: Uint8Array, source: string): VerificationReport {
    try {
      return verifyAttestation(attestation, {
        nonce,
        expectedCertificatePem: enclave.certificatePem,
        trustedCaPem: this.caAnchors,
      });
    } catch (error) {
      if (error instanceof AttestationError) throw new AttestationFailedError(error, enclave.id, nonce, source);
      throw error;
    }
  }

  /** An enclave's phase events after `fromSequence`, until it settles (or is deleted). */
  async *watchEnclave(enclaveId: string, fromSequence = 0n): AsyncGenerator<WatchEvent> {
    const state = new Follow(enclaveId);
    state.lastSequence = fromSequence;
    try {
      yield* this.follow(state, () => this.watchStream(state));
    } catch (error) {
      throw translate(error, this.apiAddr);
    }
  }

  /**
   * Every re-attestation of the enclave as it is made, each verified (Reattested) against
   * the certificate pinned from GetEnclave when the call began; a round that does not
   * verify throws AttestationFailedError. With `nonce` the next round also quotes over it.
   * Other events come as Progress. Ends by throwing EnclaveFailedError once the licence is
   * revoked (FAILED) or the enclave is deleted; dropped streams are resumed.
   */
  async *followAttestations(
    enclaveId: string,
    options: { nonce?: Uint8Array; fromSequence?: bigint } = {},
  ): AsyncGenerator<AttestationEvent> {
    const pinned = await this.getEnclave(enclaveId);
    if (options.nonce !== undefined) await this.requestAttestation(enclaveId, options.nonce);
    const state = new Follow(enclaveId);
    state.lastSequence = options.fromSequence ?? 0n;
    const reopen = (): AsyncIterable<PhaseEvent> =>
      this.stream((headers) =>
        createClient(EnclaveService, this.apiChannel().transport).watchEnclave(
          { enclaveId, fromSequence: state.lastSequence, followAttestations: true },
          { headers },
        ),
      );
    const ends: ReadonlySet<Phase> = new Set([Phase.FAILED, Phase.DELETED]);
    try {
      for await (const event of this.follow(state, reopen, ends)) {
        const round = event.kind === "progress" ? event.event.attestationRound : 0n;
        const attestation = event.kind === "progress" ? event.attestation : undefined;
        if (event.kind !== "progress" || round === 0n || attestation === undefined) {
          yield event;
          continue;
        }
        const nonce = attestation.nonce;
        const report = this.verify(attestation, pinned, nonce, `re-attestation round ${round}`);
        const requested = options.nonce !== undefined && Buffer.from(nonce).equals(Buffer.from(options.nonce));
        yield {
          kind: "reattested",
          progress: event,
          round,
          attestation: { enclave: pinned, nonce, attestation, report },
          requested,
        };
      }
    } catch (error) {
      throw translate(error, this.apiAddr);
    }
    const last = state.last;
    if (last?.phase === Phase.FAILED) {
      const reason = state.enclave?.failureReason || last.message || "no reason was given";
      throw new EnclaveFailedError(
        `enclave ${enclaveId} failed: ${reason.replace(/\.$/, "")} (FAILED)`,
        enclaveId,
        Phase.FAILED,
      );
    }
    throw new EnclaveFailedError(`enclave ${enclaveId} was deleted`, enclaveId, Phase.DELETED);
  }

  /** Ask for the enclave's next re-attestation round to quote over `nonce` too. */
  async requestAttestation(enclaveId: string, nonce: Uint8Array): Promise<void> {
    await this.unary((headers) =>
      createClient(EnclaveService, this.apiChannel().transport).requestAttestation(
        { enclaveId, nonce },
        this.options(headers),
      ),
    );
  }

  private async getAttestation(enclaveId: string, nonce: Uint8Array): Promise<Attestation> {
    const reply = await this.unary((headers) =>
      createClient(AttestationService, this.apiChannel().transport).getAttestation(
        { enclaveId, nonce },
        this.options(headers),
      ),
    );
    if (reply.attestation === undefined) throw new LicensingError("the server sent no attestation");
    return reply.attestation;
  }

  async getEnclave(enclaveId: string): Promise<Enclave> {
    const reply = await this.unary((headers) =>
      createClient(EnclaveService, this.apiChannel().transport).getEnclave({ enclaveId }, this.options(headers)),
    );
    if (reply.enclave === undefined) throw new LicensingError("the server described no enclave");
    return reply.enclave;
  }

  /** Every enclave of the user, fetched a page at a time. */
  async *listEnclaves(pageSize = 0): AsyncGenerator<Enclave> {
    let pageToken = "";
    const seen = new Set<string>();
    for (;;) {
      const reply = await this.unary((headers) =>
        createClient(EnclaveService, this.apiChannel().transport).listEnclaves(
          { pageSize, pageToken },
          this.options(headers),
        ),
      );
      yield* reply.enclaves;
      pageToken = reply.nextPageToken;
      if (!pageToken) return;
      if (seen.has(pageToken)) throw new LicensingError("the server repeated a page token");
      seen.add(pageToken);
    }
  }

  async deleteEnclave(enclaveId: string): Promise<void> {
    await this.unary((headers) =>
      createClient(EnclaveService, this.apiChannel().transport).deleteEnclave({ enclaveId }, this.options(headers)),
    );
  }

  /**
   * Verify a fresh attestation (GetAttestation over a new nonce) of the enclave, as
   * GetEnclave reports it. Throws EnclaveNotReadyError if it has no certificate to attest,
   * AttestationFailedError (naming the check) if it does not verify.
   */
  async attest(enclaveId: string): Promise<EnclaveAttestation> {
    const enclave = await this.getEnclave(enclaveId);
    if (!sameId(enclave.id, enclaveId)) {
      throw new LicensingError(`asked for enclave ${enclaveId}, the server described ${enclave.id}`);
    }
    if (!ATTESTABLE_PHASES.has(enclave.phase) || !enclave.endpoint || !enclave.certificatePem) {
      throw new EnclaveNotReadyError(enclave);
    }
    const nonce = randomBytes(NONCE_BYTES);
    const attestation = await this.getAttestation(enclave.id, nonce);
    const report = this.verify(attestation, enclave, nonce, "GetAttestation");
    return { enclave, nonce, attestation, report };
  }

  /**
   * Attest the enclave (attest), then a session pinned to the attested certificate.
   * Nothing connects to the enclave unless the attestation verified.
   */
  async openEnclave(enclaveId: string): Promise<EnclaveSession> {
    const verified = await this.attest(enclaveId);
    return this.sessionFor(verified);
  }

  /** A session on an attestation verified already (createEnclave's Created event). */
  sessionFor(verified: EnclaveAttestation): EnclaveSession {
    this.enclaves.get(verified.enclave.id)?.close();
    this.enclaves.delete(verified.enclave.id);
    return new EnclaveSession(this, verified);
  }
}

/** Enclave ids are UUIDs, which the server accepts in any case. */
function sameId(reported: string, requested: string): boolean {
  return reported.toLowerCase().replace(/[{}-]/g, "") === requested.toLowerCase().replace(/[{}-]/g, "");
}

/** Calls to one attested enclave's WorkloadService, pinned to its attested certificate. */
export class EnclaveSession {
  constructor(
    readonly client: LicensingClient,
    readonly attestation: EnclaveAttestation,
  ) {}

  get enclave(): Enclave {
    return this.attestation.enclave;
  }

  get report(): VerificationReport {
    return this.attestation.report;
  }

  private run<T>(fn: (workload: Client<typeof WorkloadService>, headers: Headers) => Promise<T>): Promise<T> {
    return this.client.unary(
      (headers) =>
        fn(createClient(WorkloadService, this.client.enclaveChannel(this.enclave).transport), {
          ...headers,
        }),
      this.enclave.endpoint,
    );
  }

  private opts(headers: Headers): { headers: Headers; timeoutMs: number } {
    return { headers, timeoutMs: this.client.rpcTimeoutMs };
  }

  async getIdentity(): Promise<Identity> {
    const reply = await this.run((w, h) => w.getIdentity({}, this.opts(h)));
    const pinned = certificateSha256(this.enclave.certificatePem);
    return {
      enclaveId: reply.enclaveId,
      owner: reply.owner,
      certificateSha256: reply.certificateSha256,
      certificatePem: reply.certificatePem,
      matchesPinnedCertificate: Buffer.from(reply.certificateSha256).equals(pinned),
    };
  }

  async putSecret(name: string, value: Uint8Array): Promise<void> {
    await this.run((w, h) => w.putSecret({ name, value }, this.opts(h)));
  }

  async getSecret(name: string): Promise<Uint8Array> {
    return (await this.run((w, h) => w.getSecret({ name }, this.opts(h)))).value;
  }

  async listSecrets(): Promise<string[]> {
    return (await this.run((w, h) => w.listSecrets({}, this.opts(h)))).names;
  }

  async deleteSecret(name: string): Promise<void> {
    await this.run((w, h) => w.deleteSecret({ name }, this.opts(h)));
  }

  /**
   * Sign `data` in the enclave; verified here against the pinned certificate (not the one
   * the reply names), else SignatureInvalidError.
   */
  async sign(data: Uint8Array): Promise<Signature> {
    const reply = await this.run((w, h) => w.sign({ data }, this.opts(h)));
    const pinned = this.enclave.certificatePem;
    if (!verifySignature(pinned, data, reply.signature)) {
      throw new SignatureInvalidError(
        `the signature from enclave ${this.enclave.id} does not verify against its certificate`,
      );
    }
    return { signature: reply.signature, certificatePem: pinned };
  }
}
