package licensing

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"licensing.internal/clients/go/attestation"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// Error is a call the server refused (Code is not OK) or could not be reached.
// Reason and Metadata are the google.rpc.ErrorInfo the server attached.
type Error struct {
	Code       codes.Code
	Reason     string
	Metadata   map[string]string
	Message    string
	RetryDelay time.Duration
	Address    string
	cause      error
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s: %s (%s %s)", e.Address, e.Message, e.Code, e.Reason)
	}
	return fmt.Sprintf("%s: %s (%s)", e.Address, e.Message, e.Code)
}

func (e *Error) Unwrap() error { return e.cause }

// Sentinel errors, for errors.Is.
var (
	// ErrNotLoggedIn: call LogIn first.
	ErrNotLoggedIn = errors.New("licensing: not logged in")
	// ErrSessionEnded: the server ended the session (logout, expiry, revocation); log in again.
	ErrSessionEnded = errors.New("licensing: the session ended")
	// ErrSignatureInvalid: an enclave's signature does not verify against its pinned certificate.
	ErrSignatureInvalid = errors.New("licensing: signature does not verify against the attested certificate")
)

// EnclaveNotReadyError: the enclave has no certificate to attest (not yet, or no more).
type EnclaveNotReadyError struct {
	EnclaveID string
	Phase     licensingv1.Phase
}

func (e *EnclaveNotReadyError) Error() string {
	return fmt.Sprintf("enclave %s is not running with a certificate to attest (it is %s)", e.EnclaveID, e.Phase)
}

// EnclaveFailedError: provisioning ended FAILED (Reason is the server's) or DELETED.
type EnclaveFailedError struct {
	EnclaveID string
	Phase     licensingv1.Phase
	Reason    string
}

func (e *EnclaveFailedError) Error() string {
	return fmt.Sprintf("enclave %s failed: %s (%s)", e.EnclaveID, e.Reason, e.Phase)
}

// AttestationFailedError: an attestation did not verify; do not trust the enclave.
// errors.As(err, &*attestation.AttestationError) finds the failed check.
type AttestationFailedError struct {
	Err       *attestation.AttestationError
	EnclaveID string
	Nonce     []byte
	// Source is "ATTESTED event" or "GetAttestation": where the attestation came from.
	Source string
}

func (e *AttestationFailedError) Error() string {
	return fmt.Sprintf("enclave %s failed attestation check '%s': %s", e.EnclaveID, e.Err.Check, e.Err.Detail)
}

func (e *AttestationFailedError) Unwrap() error { return e.Err }

// translate makes a gRPC failure an *Error that keeps its status, ErrorInfo and RetryInfo.
func translate(err error, address string) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: codes.Unknown, Message: err.Error(), Address: address, cause: err}
	}
	out := &Error{Code: st.Code(), Message: st.Message(), Address: address, cause: err}
	for _, d := range st.Details() {
		switch detail := d.(type) {
		case *errdetails.ErrorInfo:
			out.Reason, out.Metadata = detail.GetReason(), detail.GetMetadata()
		case *errdetails.RetryInfo:
			out.RetryDelay = detail.GetRetryDelay().AsDuration()
		}
	}
	return out
}

// reasonOf is the ErrorInfo reason of a gRPC error, if any.
func reasonOf(err error) string {
	if st, ok := status.FromError(err); ok {
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				return info.GetReason()
			}
		}
	}
	return ""
}

func tokenExpired(err error) bool {
	return status.Code(err) == codes.Unauthenticated && reasonOf(err) == "TOKEN_EXPIRED"
}
