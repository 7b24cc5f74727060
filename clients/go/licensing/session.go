package licensing

import (
	"bytes"
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	enclavev1 "licensing.internal/clients/go/gen/enclave/v1"
	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// EnclaveSession calls one attested enclave's WorkloadService over mutual TLS pinned to
// its attested certificate, with the session's access token. Close it when done.
type EnclaveSession struct {
	client      *Client
	conn        *grpc.ClientConn
	Attestation *EnclaveAttestation
}

// ConnectAttested opens the pinned connection to an enclave whose attestation verified
// (from Attest, or Created.Attestation of CreateEnclave).
func (c *Client) ConnectAttested(verified *EnclaveAttestation) (*EnclaveSession, error) {
	if verified == nil || verified.Report == nil {
		return nil, fmt.Errorf("licensing: no verified attestation to connect with")
	}
	enclave := verified.Enclave
	// The name to check in the pinned certificate (and send as SNI): empty means the
	// endpoint's host, as in the Python client.
	serverName := enclave.GetTlsServerName()
	if serverName == "" {
		if host, _, err := net.SplitHostPort(enclave.GetEndpoint()); err == nil {
			serverName = host
		}
	}
	tlsConfig, err := PinnedTLSConfig(enclave.GetCertificatePem(), serverName, c.clientCertificate)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(enclave.GetEndpoint(), grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	if err != nil {
		return nil, err
	}
	return &EnclaveSession{client: c, conn: conn, Attestation: verified}, nil
}

// Enclave is the attested enclave.
func (s *EnclaveSession) Enclave() *licensingv1.Enclave { return s.Attestation.Enclave }

// Close closes the connection to the enclave.
func (s *EnclaveSession) Close() error { return s.conn.Close() }

func (s *EnclaveSession) connection() (*grpc.ClientConn, error) { return s.conn, nil }

func run[T any](ctx context.Context, s *EnclaveSession, fn func(context.Context, enclavev1.WorkloadServiceClient) (T, error)) (T, error) {
	return call(ctx, s.client, s.Enclave().GetEndpoint(), s.connection, func(ctx context.Context, cc *grpc.ClientConn) (T, error) {
		return fn(ctx, enclavev1.NewWorkloadServiceClient(cc))
	})
}

// Identity is GetIdentity, and whether it names the certificate we pinned.
type Identity struct {
	EnclaveID                string
	Owner                    string
	CertificateSHA256        []byte
	CertificatePEM           string
	MatchesPinnedCertificate bool
}

// GetIdentity asks the enclave who it is.
func (s *EnclaveSession) GetIdentity(ctx context.Context) (*Identity, error) {
	reply, err := run(ctx, s, func(ctx context.Context, w enclavev1.WorkloadServiceClient) (*enclavev1.GetIdentityResponse, error) {
		return w.GetIdentity(ctx, &enclavev1.GetIdentityRequest{})
	})
	if err != nil {
		return nil, err
	}
	pinned, err := CertificateSHA256(s.Enclave().GetCertificatePem())
	if err != nil {
		return nil, err
	}
	return &Identity{
		EnclaveID: reply.GetEnclaveId(), Owner: reply.GetOwner(), CertificateSHA256: reply.GetCertificateSha256(),
		CertificatePEM: reply.GetCertificatePem(), MatchesPinnedCertificate: bytes.Equal(reply.GetCertificateSha256(), pinned),
	}, nil
}

// PutSecret stores a secret in the enclave.
func (s *EnclaveSession) PutSecret(ctx context.Context, name string, value []byte) error {
	_, err := run(ctx, s, func(ctx context.Context, w enclavev1.WorkloadServiceClient) (*enclavev1.PutSecretResponse, error) {
		return w.PutSecret(ctx, &enclavev1.PutSecretRequest{Name: name, Value: value})
	})
	return err
}

// GetSecret reads a secret back.
func (s *EnclaveSession) GetSecret(ctx context.Context, name string) ([]byte, error) {
	reply, err := run(ctx, s, func(ctx context.Context, w enclavev1.WorkloadServiceClient) (*enclavev1.GetSecretResponse, error) {
		return w.GetSecret(ctx, &enclavev1.GetSecretRequest{Name: name})
	})
	if err != nil {
		return nil, err
	}
	return reply.GetValue(), nil
}

// ListSecrets names the enclave's secrets.
func (s *EnclaveSession) ListSecrets(ctx context.Context) ([]string, error) {
	reply, err := run(ctx, s, func(ctx context.Context, w enclavev1.WorkloadServiceClient) (*enclavev1.ListSecretsResponse, error) {
		return w.ListSecrets(ctx, &enclavev1.ListSecretsRequest{})
	})
	if err != nil {
		return nil, err
	}
	return reply.GetNames(), nil
}

// DeleteSecret removes a secret.
func (s *EnclaveSession) DeleteSecret(ctx context.Context, name string) error {
	_, err := run(ctx, s, func(ctx context.Context, w enclavev1.WorkloadServiceClient) (*enclavev1.DeleteSecretResponse, error) {
		return w.DeleteSecret(ctx, &enclavev1.DeleteSecretRequest{Name: name})
	})
	return err
}

// Signature is a signature verified here against the attested, pinned certificate.
type Signature struct {
	Signature      []byte
	CertificatePEM string
}

// Sign signs data in the enclave; the signature is verified here against the pinned
// certificate (not the one the reply names), else ErrSignatureInvalid.
func (s *EnclaveSession) Sign(ctx context.Context, data []byte) (*Signature, error) {
	reply, err := run(ctx, s, func(ctx context.Context, w enclavev1.WorkloadServiceClient) (*enclavev1.SignResponse, error) {
		return w.Sign(ctx, &enclavev1.SignRequest{Data: data})
	})
	if err != nil {
		return nil, err
	}
	pinned := s.Enclave().GetCertificatePem()
	if !VerifySignature(pinned, data, reply.GetSignature()) {
		return nil, fmt.Errorf("%w (enclave %s)", ErrSignatureInvalid, s.Enclave().GetId())
	}
	return &Signature{Signature: reply.GetSignature(), CertificatePEM: pinned}, nil
}
