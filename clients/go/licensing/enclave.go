package licensing

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	mrand "math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"licensing.internal/clients/go/attestation"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// StreamRetries is how many reconnects in a row without a new event a stream makes.
const StreamRetries = 5

var (
	backoffFirst = 500 * time.Millisecond
	backoffMax   = 8 * time.Second
)

// Event is one item of CreateEnclave or WatchEnclave: *Progress, *Reconnecting,
// *FetchingAttestation or (last, CreateEnclave only) *Created.
type Event interface{ isEvent() }

// Progress is one phase event of an enclave, as the server sent it.
type Progress struct {
	EnclaveID   string
	Phase       licensingv1.Phase
	Message     string
	Sequence    uint64
	Time        time.Time
	Enclave     *licensingv1.Enclave     // set on READY and final events
	Attestation *licensingv1.Attestation // set on the ATTESTED event
	// AttestationRound is 0 on the provisioning attestation, N on re-attestation round N.
	AttestationRound uint64
}

// Reconnecting: the stream dropped (Err); it is reopened from FromSequence after Delay.
type Reconnecting struct {
	Err          error
	Attempt      int
	Attempts     int
	Delay        time.Duration
	FromSequence uint64
}

// FetchingAttestation: the events brought no attestation over our nonce (Why); a fresh
// one is fetched with GetAttestation.
type FetchingAttestation struct {
	EnclaveID string
	Why       string
}

// Created is the last event of CreateEnclave: the enclave and its verified attestation
// (nil only with CreateOptions.SkipVerify), from the "ATTESTED event" or "GetAttestation".
type Created struct {
	Enclave     *licensingv1.Enclave
	Attestation *EnclaveAttestation
	Source      string
}

func (*Progress) isEvent()            {}
func (*Reconnecting) isEvent()        {}
func (*FetchingAttestation) isEvent() {}
func (*Created) isEvent()             {}

// EnclaveAttestation is a verified attestation: the enclave, our nonce, what the server
// returned for it, and the verifier's report.
type EnclaveAttestation struct {
	Enclave     *licensingv1.Enclave
	Nonce       []byte
	Attestation *licensingv1.Attestation
	Report      *attestation.Report
}

// CreateOptions tune CreateEnclave; the zero value is a new request id and random nonce.
type CreateOptions struct {
	// RequestID is the idempotency key (a random one if empty): the same id never makes a
	// second enclave, so a create that failed on the way can be repeated.
	RequestID string
	// Nonce is quoted in the ATTESTED event (NonceBytes random bytes if nil).
	Nonce []byte
	// SkipVerify ends without verifying the attestation (Created.Attestation is nil).
	SkipVerify bool
}

type phaseEvent interface {
	GetEnclaveId() string
	GetPhase() licensingv1.Phase
	GetMessage() string
	GetSequence() uint64
	GetEnclave() *licensingv1.Enclave
	GetAttestation() *licensingv1.Attestation
	GetTime() *timestamppb.Timestamp
}

// follow is what a phase stream showed so far; replays (an event seen twice) are dropped.
type follow struct {
	lastSequence uint64
	enclaveID    string
	last         *Progress
	enclave      *licensingv1.Enclave
	attestation  *licensingv1.Attestation
	attempts     int
	// continuous: ATTESTED is not the end (FollowAttestations), so a break after it resumes.
	continuous bool
}

func (f *follow) see(e phaseEvent) *Progress {
	if e.GetSequence() != 0 && e.GetSequence() <= f.lastSequence {
		return nil
	}
	p := &Progress{EnclaveID: e.GetEnclaveId(), Phase: e.GetPhase(), Message: e.GetMessage(), Sequence: e.GetSequence()}
	if e.GetTime() != nil {
		p.Time = e.GetTime().AsTime()
	}
	if e.GetEnclave().GetId() != "" {
		p.Enclave = e.GetEnclave()
		f.enclave = p.Enclave
	}
	if len(e.GetAttestation().GetQuote()) != 0 {
		p.Attestation = e.GetAttestation()
		f.attestation = p.Attestation
	}
	if r, ok := e.(interface{ GetAttestationRound() uint64 }); ok {
		p.AttestationRound = r.GetAttestationRound()
	}
	f.lastSequence = max(f.lastSequence, e.GetSequence())
	if p.EnclaveID != "" {
		f.enclaveID = p.EnclaveID
	}
	f.last, f.attempts = p, 0
	return p
}

func settled(p *Progress) bool {
	return p != nil && (p.Phase == licensingv1.Phase_PHASE_ATTESTED || p.Phase == licensingv1.Phase_PHASE_FAILED || p.Phase == licensingv1.Phase_PHASE_DELETED)
}

// transient errors are worth reconnecting for: the server unreachable or the connection dropped.
func transient(err error) bool { return status.Code(err) == codes.Unavailable }

// openStream opens a server stream on the API with a fresh token; an expiry answered
// before any message is refreshed once.
type openStream func(ctx context.Context, cc *grpc.ClientConn) (recv func() (phaseEvent, error), err error)

// followStream yields phase events, reopening the stream where it left off when it drops
// (at most StreamRetries reconnects in a row without a new event, exponential backoff).
func (c *Client) followStream(ctx context.Context, state *follow, reopen func() openStream, yield func(Event, error) bool) (stop bool, err error) {
	refreshed := false
	for {
		err := func() error {
			session, err := c.EnsureFresh(ctx)
			if err != nil {
				return err
			}
			cc, err := c.apiConn()
			if err != nil {
				return err
			}
			streamCtx, cancel := context.WithCancel(withToken(ctx, session))
			defer cancel()
			recv, err := reopen()(streamCtx, cc)
			if err != nil {
				return err
			}
			started := false
			for {
				event, err := recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					if !started && !refreshed && tokenExpired(err) {
						refreshed = true
						if _, rerr := c.refresh(ctx, session, false); rerr != nil {
							return rerr
						}
						return errRetryNow
					}
					return err
				}
				started = true
				if p := state.see(event); p != nil && !yield(p, nil) {
					return errStopped
				}
			}
		}()
		switch {
		case err == nil:
			return false, nil
		case errors.Is(err, errStopped):
			return true, nil
		case errors.Is(err, errRetryNow):
			continue
		case settled(state.last) && !(state.continuous && state.last.Phase == licensingv1.Phase_PHASE_ATTESTED):
			// The stream broke after its final event, before it closed: nothing is missing.
			return false, nil
		case !transient(err) || state.attempts >= StreamRetries:
			return false, translate(err, c.cfg.APIAddr)
		}
		state.attempts++
		delay := min(time.Duration(float64(backoffFirst)*math.Pow(2, float64(state.attempts-1))), backoffMax)
		delay = time.Duration(float64(delay) * (0.8 + 0.4*mrand.Float64()))
		if !yield(&Reconnecting{Err: err, Attempt: state.attempts, Attempts: StreamRetries, Delay: delay, FromSequence: state.lastSequence}, nil) {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(delay):
		}
	}
}

var (
	errStopped  = errors.New("stopped by the caller")
	errRetryNow = errors.New("retry after refresh")
)

func (c *Client) watchStream(state *follow) openStream {
	request := &licensingv1.WatchEnclaveRequest{EnclaveId: state.enclaveID, FromSequence: state.lastSequence}
	return func(ctx context.Context, cc *grpc.ClientConn) (func() (phaseEvent, error), error) {
		stream, err := licensingv1.NewEnclaveServiceClient(cc).WatchEnclave(ctx, request)
		if err != nil {
			return nil, err
		}
		return func() (phaseEvent, error) { return stream.Recv() }, nil
	}
}

func newRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// CreateEnclave creates an enclave: its progress events, ending in *Created with the
// attestation verified against our nonce, the enclave's certificate and the trusted CA.
// A dropped stream is resumed (*Reconnecting); a repeated create (same RequestID)
// replays the first request's events, over that request's nonce, so then a fresh
// attestation is fetched (*FetchingAttestation). A non-nil error ends the sequence:
// *EnclaveFailedError (FAILED, DELETED), *AttestationFailedError, *Error.
//
//	for event, err := range client.CreateEnclave(ctx, licensing.CreateOptions{}) { ... }
func (c *Client) CreateEnclave(ctx context.Context, opts CreateOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		request := &licensingv1.CreateEnclaveRequest{RequestId: opts.RequestID, Nonce: opts.Nonce}
		if request.RequestId == "" {
			request.RequestId = newRequestID()
		}
		if request.Nonce == nil {
			request.Nonce = make([]byte, NonceBytes)
			if _, err := rand.Read(request.Nonce); err != nil {
				yield(nil, err)
				return
			}
		}
		state := &follow{}
		reopen := func() openStream {
			// Until the enclave has an id, CreateEnclave again (idempotent by request id);
			// after that, resume its events with WatchEnclave.
			if state.enclaveID != "" {
				return c.watchStream(state)
			}
			return func(ctx context.Context, cc *grpc.ClientConn) (func() (phaseEvent, error), error) {
				stream, err := licensingv1.NewEnclaveServiceClient(cc).CreateEnclave(ctx, request)
				if err != nil {
					return nil, err
				}
				return func() (phaseEvent, error) { return stream.Recv() }, nil
			}
		}
		stop, err := c.followStream(ctx, state, reopen, yield)
		if stop {
			return
		}
		if err == nil {
			err = provisioningFailure(state)
		}
		if err != nil {
			yield(nil, err)
			return
		}
		enclave := state.enclave
		if enclave == nil {
			if enclave, err = c.GetEnclave(ctx, state.enclaveID); err != nil {
				yield(nil, err)
				return
			}
		}
		if opts.SkipVerify {
			yield(&Created{Enclave: enclave}, nil)
			return
		}
		att, source := state.attestation, "ATTESTED event"
		if att == nil || !bytes.Equal(att.GetNonce(), request.Nonce) {
			why := "no attestation arrived with the events"
			if att != nil {
				why = "the ATTESTED event is a replay, over the nonce of the first create with this request id"
			}
			if !yield(&FetchingAttestation{EnclaveID: enclave.GetId(), Why: why}, nil) {
				return
			}
			if att, err = c.getAttestation(ctx, enclave.GetId(), request.Nonce); err != nil {
				yield(nil, err)
				return
			}
			source = "GetAttestation"
		}
		verified, err := c.verify(enclave, request.Nonce, att, source)
		if err != nil {
			yield(nil, err)
			return
		}
		yield(&Created{Enclave: enclave, Attestation: verified, Source: source}, nil)
	}
}

func provisioningFailure(state *follow) error {
	if state.last == nil {
		return errors.New("licensing: the server sent no event")
	}
	switch state.last.Phase {
	case licensingv1.Phase_PHASE_FAILED:
		reason := state.enclave.GetFailureReason()
		if reason == "" {
			reason = state.last.Message
		}
		if reason == "" {
			reason = "no reason was given"
		}
		return &EnclaveFailedError{EnclaveID: state.enclaveID, Phase: licensingv1.Phase_PHASE_FAILED, Reason: strings.TrimRight(reason, ".")}
	case licensingv1.Phase_PHASE_DELETED:
		return &EnclaveFailedError{EnclaveID: state.enclaveID, Phase: licensingv1.Phase_PHASE_DELETED, Reason: "deleted before it was ready"}
	}
	return nil
}

// WatchEnclave yields an enclave's phase events after fromSequence, until it settles.
func (c *Client) WatchEnclave(ctx context.Context, enclaveID string, fromSequence uint64) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		state := &follow{lastSequence: fromSequence, enclaveID: enclaveID}
		stop, err := c.followStream(ctx, state, func() openStream { return c.watchStream(state) }, yield)
		if !stop && err != nil {
			yield(nil, err)
		}
	}
}

func (c *Client) verify(enclave *licensingv1.Enclave, nonce []byte, att *licensingv1.Attestation, source string) (*EnclaveAttestation, error) {
	report, err := attestation.Verify(att, attestation.Options{
		Nonce:                  nonce,
		ExpectedCertificatePEM: enclave.GetCertificatePem(),
		TrustedCAPEM:           c.anchors,
	})
	if err != nil {
		var failed *attestation.AttestationError
		if errors.As(err, &failed) {
			return nil, &AttestationFailedError{Err: failed, EnclaveID: enclave.GetId(), Nonce: nonce, Source: source}
		}
		return nil, err
	}
	return &EnclaveAttestation{Enclave: enclave, Nonce: nonce, Attestation: att, Report: report}, nil
}

func (c *Client) getAttestation(ctx context.Context, enclaveID string, nonce []byte) (*licensingv1.Attestation, error) {
	reply, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.GetAttestationResponse, error) {
		return licensingv1.NewAttestationServiceClient(cc).GetAttestation(ctx, &licensingv1.GetAttestationRequest{EnclaveId: enclaveID, Nonce: nonce})
	})
	if err != nil {
		return nil, err
	}
	return reply.GetAttestation(), nil
}

// GetEnclave is GetEnclave.
func (c *Client) GetEnclave(ctx context.Context, enclaveID string) (*licensingv1.Enclave, error) {
	reply, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.GetEnclaveResponse, error) {
		return licensingv1.NewEnclaveServiceClient(cc).GetEnclave(ctx, &licensingv1.GetEnclaveRequest{EnclaveId: enclaveID})
	})
	if err != nil {
		return nil, err
	}
	return reply.GetEnclave(), nil
}

// ListEnclaves yields every enclave of the user, a page (pageSize, 0: the server's) at a time.
func (c *Client) ListEnclaves(ctx context.Context, pageSize int32) iter.Seq2[*licensingv1.Enclave, error] {
	return func(yield func(*licensingv1.Enclave, error) bool) {
		token, seen := "", map[string]bool{}
		for {
			reply, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.ListEnclavesResponse, error) {
				return licensingv1.NewEnclaveServiceClient(cc).ListEnclaves(ctx, &licensingv1.ListEnclavesRequest{PageSize: pageSize, PageToken: token})
			})
			if err != nil {
				yield(nil, err)
				return
			}
			for _, e := range reply.GetEnclaves() {
				if !yield(e, nil) {
					return
				}
			}
			if token = reply.GetNextPageToken(); token == "" {
				return
			}
			if seen[token] {
				yield(nil, errors.New("licensing: the server repeated a page token"))
				return
			}
			seen[token] = true
		}
	}
}

// DeleteEnclave is DeleteEnclave.
func (c *Client) DeleteEnclave(ctx context.Context, enclaveID string) error {
	_, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.DeleteEnclaveResponse, error) {
		return licensingv1.NewEnclaveServiceClient(cc).DeleteEnclave(ctx, &licensingv1.DeleteEnclaveRequest{EnclaveId: enclaveID})
	})
	return err
}

// attestablePhases: the enclave runs with its certificate (the server quotes only these).
var attestablePhases = map[licensingv1.Phase]bool{
	licensingv1.Phase_PHASE_READY: true, licensingv1.Phase_PHASE_ATTESTING: true, licensingv1.Phase_PHASE_ATTESTED: true,
}

// Attest verifies a fresh attestation (GetAttestation over a new nonce) of the enclave
// that GetEnclave describes. *EnclaveNotReadyError if it has no certificate to attest,
// *AttestationFailedError (naming the failed check) if it does not verify.
func (c *Client) Attest(ctx context.Context, enclaveID string) (*EnclaveAttestation, error) {
	enclave, err := c.GetEnclave(ctx, enclaveID)
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(enclave.GetId(), enclaveID) {
		return nil, fmt.Errorf("licensing: asked for enclave %s, the server described %s", enclaveID, enclave.GetId())
	}
	if !attestablePhases[enclave.GetPhase()] || enclave.GetEndpoint() == "" || enclave.GetCertificatePem() == "" {
		return nil, &EnclaveNotReadyError{EnclaveID: enclave.GetId(), Phase: enclave.GetPhase()}
	}
	nonce := make([]byte, NonceBytes)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	att, err := c.getAttestation(ctx, enclave.GetId(), nonce)
	if err != nil {
		return nil, err
	}
	return c.verify(enclave, nonce, att, "GetAttestation")
}

// OpenEnclave attests the enclave (Attest), then connects pinned to exactly the attested
// certificate. Nothing connects to the enclave unless the attestation verified.
func (c *Client) OpenEnclave(ctx context.Context, enclaveID string) (*EnclaveSession, error) {
	verified, err := c.Attest(ctx, enclaveID)
	if err != nil {
		return nil, err
	}
	return c.ConnectAttested(verified)
}
