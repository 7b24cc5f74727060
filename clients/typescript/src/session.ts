/**
 * A logged-in session and where it is kept between calls.
 *
 * A refresh token is single use and presenting a spent one revokes the whole session, so
 * whoever refreshes must hold the store's lock and read the stored session again under it.
 */

/** Tokens, their expiry, and the client certificate with its key (made locally). */
export interface Session {
  username: string;
  userId: string;
  accessToken: string;
  accessTokenExpireTime: Date;
  refreshToken: string;
  refreshTokenExpireTime: Date;
  clientCertificatePem: string;
  clientKeyPem: string;
  clientCertificateExpireTime: Date;
}

/** Where LicensingClient keeps its session. */
export interface SessionStore {
  load(): Session | undefined;
  save(session: Session): void;
  /** Runs `fn` excluding every other user of the same stored session. */
  withLock<T>(fn: () => Promise<T>): Promise<T>;
}

/** The default store: the session lives as long as this object, in this process. */
export class MemorySessionStore implements SessionStore {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private session?: Session) {}

  load(): Session | undefined {
    return this.session;
  }

  save(session: Session): void {
    this.session = session;
  }

  withLock<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }
}
