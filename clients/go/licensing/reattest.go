package licensing

import (
	"bytes"
	"context"
	"fmt"
	"iter"

	"google.golang.org/grpc"

	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// Reattested is one re-attestation round's evidence, verified here against the
// certificate pinned when FollowAttestations began. Requested is true when it binds the
// nonce this client asked for (fresh by our own clock, not only the server's).
type Reattested struct {
	Progress    *Progress
	Round       uint64
	Attestation *EnclaveAttestation
	Requested   bool
}

func (*Reattested) isEvent() {}

// RequestAttestation asks for the enclave's next re-attestation round to quote over nonce too.
func (c *Client) RequestAttestation(ctx context.Context, enclaveID string, nonce []byte) error {
	_, err := call(ctx, c, c.cfg.APIAddr, c.apiConn, func(ctx context.Context, cc *grpc.ClientConn) (*licensingv1.RequestAttestationResponse, error) {
		return licensingv1.NewEnclaveServiceClient(cc).RequestAttestation(ctx, &licensingv1.RequestAttestationRequest{EnclaveId: enclaveID, Nonce: nonce})
	})
	return err
}

// FollowAttestations yields every re-attestation of the enclave as it is made, each
// verified (*Reattested) against the certificate pinned from GetEnclave when it began;
// a round that does not verify ends it with *AttestationFailedError. With nonce (nil:
// none) the next round also quotes over it. Other events come as *Progress and
// *Reconnecting. It ends with *EnclaveFailedError once the licence is revoked (FAILED)
// or the enclave is deleted.
func (c *Client) FollowAttestations(ctx context.Context, enclaveID string, nonce []byte, fromSequence uint64) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		pinned, err := c.GetEnclave(ctx, enclaveID)
		if err != nil {
			yield(nil, err)
			return
		}
		if nonce != nil {
			if err := c.RequestAttestation(ctx, enclaveID, nonce); err != nil {
				yield(nil, err)
				return
			}
		}
		state := &follow{lastSequence: fromSequence, enclaveID: enclaveID, continuous: true}
		reopen := func() openStream {
			request := &licensingv1.WatchEnclaveRequest{EnclaveId: enclaveID, FromSequence: state.lastSequence, FollowAttestations: true}
			return func(ctx context.Context, cc *grpc.ClientConn) (func() (phaseEvent, error), error) {
				stream, err := licensingv1.NewEnclaveServiceClient(cc).WatchEnclave(ctx, request)
				if err != nil {
					return nil, err
				}
				return func() (phaseEvent, error) { return stream.Recv() }, nil
			}
		}
		var failed error
		stop, err := c.followStream(ctx, state, reopen, func(e Event, err error) bool {
			p, ok := e.(*Progress)
			if !ok || p.AttestationRound == 0 || p.Attestation == nil {
				return yield(e, err)
			}
			source := fmt.Sprintf("re-attestation round %d", p.AttestationRound)
			verified, verr := c.verify(pinned, p.Attestation.GetNonce(), p.Attestation, source)
			if verr != nil {
				failed = verr
				return false
			}
			requested := nonce != nil && bytes.Equal(p.Attestation.GetNonce(), nonce)
			return yield(&Reattested{Progress: p, Round: p.AttestationRound, Attestation: verified, Requested: requested}, nil)
		})
		switch {
		case failed != nil:
			yield(nil, failed)
		case stop:
		case err != nil:
			yield(nil, err)
		default:
			if failure := provisioningFailure(state); failure != nil {
				yield(nil, failure)
				return
			}
			yield(nil, &EnclaveFailedError{EnclaveID: enclaveID, Phase: licensingv1.Phase_PHASE_DELETED, Reason: "the enclave was deleted"})
		}
	}
}
