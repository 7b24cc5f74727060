// Package licensing is the Go client of the licensing server, shaped like the Python
// high-level API (licensing_client.LicensingClient).
//
// The client verifies the licensing server against the CA it is given and nothing else.
// LogIn makes an ECDSA P-256 key and CSR here (only the CSR is sent); the server signs it
// into a client certificate, and every later call is mutual TLS with that certificate
// plus the access token bound to it. Before each call the token is refreshed if it
// expires within a minute (with a new key and certificate if the certificate expires
// within an hour), and a call answered UNAUTHENTICATED / TOKEN_EXPIRED is refreshed and
// retried once. CreateEnclave streams progress events and ends with a verified
// attestation; OpenEnclave verifies a fresh attestation before any connection to the
// enclave exists, then pins exactly the attested certificate.
package licensing

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"licensing.internal/clients/go/attestation"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

const (
	// DefaultTimeout bounds each unary call.
	DefaultTimeout = 30 * time.Second
	// AccessTokenMargin: a token expiring sooner than this is refreshed before a call.
	AccessTokenMargin = 60 * time.Second
	// CertificateMargin: a client certificate expiring sooner than this is renewed.
	CertificateMargin = time.Hour
	// NonceBytes is the size of the fresh random nonce of every attestation request.
	NonceBytes = 32
)

// refresh failures after which only a new login helps.
var sessionOver = map[string]bool{
	"REFRESH_TOKEN_INVALID": true, "REFRESH_TOKEN_EXPIRED": true, "REFRESH_TOKEN_REUSED": true,
	"SESSION_REVOKED": true, "USER_NOT_FOUND": true,
}

// Session is a logged-in user: tokens, their expiry, and the client certificate with
// its key (made here). Never print it.
type Session struct {
	Username                    string
	UserID                      string
	AccessToken                 string
	AccessTokenExpireTime       time.Time
	RefreshToken                string
	RefreshTokenExpireTime      time.Time
	ClientCertificatePEM        string
	ClientKey                   *ecdsa.PrivateKey
	ClientCertificateExpireTime time.Time
	certificate                 tls.Certificate
}

func (s *Session) String() string { return fmt.Sprintf("Session(%s, %s)", s.Username, s.UserID) }

// Config says where the licensing server listens and which CA to trust.
type Config struct {
	// EnrollAddr is the server-authenticated TLS listener (SignUp, Login, RefreshToken).
	EnrollAddr string
	// APIAddr is the mutual-TLS listener (everything else).
	APIAddr string
	// CAPEM is the licensing CA bundle (PEM, one or more certificates), pinned out of band.
	CAPEM []byte
	// RPCTimeout bounds each unary call; zero means DefaultTimeout.
	RPCTimeout time.Duration
}

// Account is a signed-up user.
type Account struct {
	UserID   string
	Username string
}

// Client is one user's client of one licensing server. Safe for concurrent use.
type Client struct {
	cfg     Config
	anchors []string

	mu         sync.Mutex // guards session and the API connection
	refreshing sync.Mutex // one refresh at a time (a refresh token is single use)
	session    *Session
	enroll     *grpc.ClientConn
	api        *grpc.ClientConn
}

// New makes a client trusting only cfg.CAPEM; connections open on first use.
func New(cfg Config) (*Client, error) {
	anchors, err := attestation.SplitPEM(cfg.CAPEM)
	if err != nil {
		return nil, fmt.Errorf("licensing: CA bundle: %w", err)
	}
	if cfg.RPCTimeout == 0 {
		cfg.RPCTimeout = DefaultTimeout
	}
	tlsConfig, err := caTLSConfig(anchors, nil)
	if err != nil {
		return nil, err
	}
	enroll, err := grpc.NewClient(cfg.EnrollAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, anchors: anchors, enroll: enroll}, nil
}

// TrustAnchors is the trusted licensing CA, one PEM a certificate.
func (c *Client) TrustAnchors() []string { return c.anchors }

// Close closes every connection of the client.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.api != nil {
		_ = c.api.Close()
		c.api = nil
	}
	return c.enroll.Close()
}

func (c *Client) unaryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.RPCTimeout)
}

// SignUp creates an account.
func (c *Client) SignUp(ctx context.Context, username, password string) (Account, error) {
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	reply, err := licensingv1.NewAuthServiceClient(c.enroll).SignUp(ctx, &licensingv1.SignUpRequest{Username: username, Password: password})
	if err != nil {
		return Account{}, translate(err, c.cfg.EnrollAddr)
	}
	return Account{UserID: reply.GetUserId(), Username: reply.GetUsername()}, nil
}

// LogIn logs in with a key and CSR made here; the session is kept in the client.
func (c *Client) LogIn(ctx context.Context, username, password string) (*Session, error) {
	key, csr, err := newKeyAndCSR(username)
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	reply, err := licensingv1.NewAuthServiceClient(c.enroll).Login(ctx, &licensingv1.LoginRequest{Username: username, Password: password, CsrPem: csr})
	if err != nil {
		return nil, translate(err, c.cfg.EnrollAddr)
	}
	session := &Session{
		Username:                    username,
		UserID:                      reply.GetUserId(),
		AccessToken:                 reply.GetAccessToken(),
		AccessTokenExpireTime:       reply.GetAccessTokenExpireTime().AsTime(),
		RefreshToken:                reply.GetRefreshToken(),
		RefreshTokenExpireTime:      reply.GetRefreshTokenExpireTime().AsTime(),
		ClientCertificatePEM:        reply.GetClientCertificatePem(),
		ClientKey:                   key,
		ClientCertificateExpireTime: reply.GetClientCertificateExpireTime().AsTime(),
	}
	if err := session.bindCertificate(); err != nil {
		return nil, err
	}
	if cert, err := firstCertificate(session.ClientCertificatePEM); err == nil && cert.Subject.CommonName != "" {
		session.Username = cert.Subject.CommonName // the server puts the normalised name there
	}
	c.adopt(session)
	return session, nil
}

// bindCertificate checks that the issued certificate is for our key and keeps the pair for TLS.
func (s *Session) bindCertificate() error {
	cert, err := firstCertificate(s.ClientCertificatePEM)
	if err != nil {
		return errors.New("licensing: the server sent an unreadable client certificate")
	}
	ours, err := x509.MarshalPKIXPublicKey(&s.ClientKey.PublicKey)
	if err != nil {
		return err
	}
	if !bytes.Equal(cert.RawSubjectPublicKeyInfo, ours) {
		return errors.New("licensing: the certificate the server issued is not for our key")
	}
	s.certificate = tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: s.ClientKey, Leaf: cert}
	return nil
}

// adopt makes session current; a new certificate drops the API connection (it presents the old one).
func (c *Client) adopt(session *Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != nil && c.session.ClientCertificatePEM != session.ClientCertificatePEM && c.api != nil {
		_ = c.api.Close()
		c.api = nil
	}
	c.session = session
}

// Session is the current session, or ErrNotLoggedIn.
func (c *Client) Session() (*Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session == nil {
		return nil, ErrNotLoggedIn
	}
	return c.session, nil
}

// clientCertificate presents the current session's certificate in TLS handshakes.
func (c *Client) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	session, err := c.Session()
	if err != nil {
		return nil, err
	}
	return &session.certificate, nil
}

func (c *Client) apiConn() (*grpc.ClientConn, error) {
	if _, err := c.Session(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.api == nil {
		tlsConfig, err := caTLSConfig(c.anchors, c.clientCertificate)
		if err != nil {
			return nil, err
		}
		conn, err := grpc.NewClient(c.cfg.APIAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
		if err != nil {
			return nil, err
		}
		c.api = conn
	}
	return c.api, nil
}

// EnsureFresh returns the session, refreshed first if its token (or certificate) is about to expire.
func (c *Client) EnsureFresh(ctx context.Context) (*Session, error) {
	session, err := c.Session()
	if err != nil {
		return nil, err
	}
	refresh, renew := needs(session, time.Now())
	if !refresh {
		return session, nil
	}
	return c.refresh(ctx, session, renew)
}

func needs(s *Session, now time.Time) (refresh, renew bool) {
	renew = s.ClientCertificateExpireTime.Sub(now) < CertificateMargin
	return renew || s.AccessTokenExpireTime.Sub(now) < AccessTokenMargin, renew
}

// Refresh rotates the tokens now (and the key and certificate if renewCertificate).
func (c *Client) Refresh(ctx context.Context, renewCertificate bool) (*Session, error) {
	session, err := c.Session()
	if err != nil {
		return nil, err
	}
	return c.refresh(ctx, session, renewCertificate)
}

// refresh rotates the session used was, unless another goroutine already did.
func (c *Client) refresh(ctx context.Context, used *Session, renew bool) (*Session, error) {
	c.refreshing.Lock()
	defer c.refreshing.Unlock()
	current, err := c.Session()
	if err != nil {
		return nil, err
	}
	if current.RefreshToken != used.RefreshToken {
		var refresh bool
		if refresh, renew = needs(current, time.Now()); !refresh {
			return current, nil
		}
	}
	if !current.RefreshTokenExpireTime.After(time.Now()) {
		return nil, ErrSessionEnded
	}
	request := &licensingv1.RefreshTokenRequest{RefreshToken: current.RefreshToken}
	var key *ecdsa.PrivateKey
	if renew {
		if key, request.CsrPem, err = newKeyAndCSR(current.Username); err != nil {
			return nil, err
		}
	}
	ctx, cancel := c.unaryContext(ctx)
	defer cancel()
	reply, err := licensingv1.NewAuthServiceClient(c.enroll).RefreshToken(ctx, request)
	if err != nil {
		if sessionOver[reasonOf(err)] {
			return nil, fmt.Errorf("%w: %w", ErrSessionEnded, translate(err, c.cfg.EnrollAddr))
		}
		return nil, translate(err, c.cfg.EnrollAddr)
	}
	next := *current
	next.AccessToken = reply.GetAccessToken()
	next.AccessTokenExpireTime = reply.GetAccessTokenExpireTime().AsTime()
	next.RefreshToken = reply.GetRefreshToken()
	if reply.GetRefreshTokenExpireTime() != nil {
		next.RefreshTokenExpireTime = reply.GetRefreshTokenExpireTime().AsTime()
	}
	if key != nil {
		if reply.GetClientCertificatePem() == "" {
			return nil, errors.New("licensing: the server issued no new certificate")
		}
		next.ClientCertificatePEM, next.ClientKey = reply.GetClientCertificatePem(), key
		next.ClientCertificateExpireTime = reply.GetClientCertificateExpireTime().AsTime()
		if err := next.bindCertificate(); err != nil {
			return nil, err
		}
	}
	c.adopt(&next)
	return &next, nil
}

// withToken adds the access token to a call's metadata.
func withToken(ctx context.Context, session *Session) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+session.AccessToken)
}

// call runs fn on conn (nil: the API connection) with a fresh token; retried once, after
// a refresh, if the server says the token expired.
func call[T any](ctx context.Context, c *Client, address string, conn func() (*grpc.ClientConn, error), fn func(context.Context, *grpc.ClientConn) (T, error)) (T, error) {
	var zero T
	session, err := c.EnsureFresh(ctx)
	if err != nil {
		return zero, err
	}
	once := func(session *Session) (T, error) {
		cc, err := conn()
		if err != nil {
			return zero, err
		}
		callCtx, cancel := c.unaryContext(ctx)
		defer cancel()
		return fn(withToken(callCtx, session), cc)
	}
	run := func(session *Session) (T, error) { return paced(ctx, func() (T, error) { return once(session) }) }
	reply, err := run(session)
	if err != nil && tokenExpired(err) {
		if session, err = c.refresh(ctx, session, false); err != nil {
			return zero, err
		}
		reply, err = run(session)
	}
	if err != nil {
		return zero, translate(err, address)
	}
	return reply, nil
}

// CurrentUser is GetCurrentUser.
func (c *Client) CurrentUser(ctx context.Context) (*licensingv1.User, error) {
	reply, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.GetCurrentUserResponse, error) {
		return licensingv1.NewAuthServiceClient(cc).GetCurrentUser(ctx, &licensingv1.GetCurrentUserRequest{})
	})
	if err != nil {
		return nil, err
	}
	return reply.GetUser(), nil
}

// LogOut ends the session on the server.
func (c *Client) LogOut(ctx context.Context) error {
	_, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.LogoutResponse, error) {
		return licensingv1.NewAuthServiceClient(cc).Logout(ctx, &licensingv1.LogoutRequest{})
	})
	return err
}

// A rate-limited call is retried when the server asks for at most this wait, this often.
const (
	MaxRetryWait     = 5 * time.Second
	RateLimitRetries = 3
)

// retryDelay is how long the server asks us to wait before calling again, if it refused
// by rate limit (the call did nothing, so calling again is safe); else false.
func retryDelay(err error) (time.Duration, bool) {
	if status.Code(err) != codes.ResourceExhausted || reasonOf(err) != "RATE_LIMITED" {
		return 0, false
	}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// paced runs fn, waiting out and repeating it while a rate limit refuses it briefly.
func paced[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	for range RateLimitRetries {
		reply, err := fn()
		delay, limited := retryDelay(err)
		if err == nil || !limited || delay > MaxRetryWait {
			return reply, err
		}
		select {
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		case <-time.After(delay):
		}
	}
	return fn()
}
