// Package attestation verifies an enclave's TPM attestation before its certificate is trusted.
//
// Every check runs in a fixed order and has a name, the same as the Python client's
// (licensing_client.attestation): magic, type, ak_attributes, ak_certificate_chain,
// signature, certificate, qualifying_data, pcr_digest, event_log, measurement_proof.
// The first failure is returned as an *AttestationError naming it, and the caller must
// then not connect to the enclave.
package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"time"

	"github.com/google/go-tpm/tpm2"

	licensingv1 "licensing.internal/clients/go/gen/licensing/v1"
)

// Check names one verification step, as the Python client spells it.
type Check string

const (
	CheckMagic              Check = "magic"
	CheckType               Check = "type"
	CheckAKAttributes       Check = "ak_attributes"
	CheckAKCertificateChain Check = "ak_certificate_chain"
	CheckSignature          Check = "signature"
	CheckCertificate        Check = "certificate"
	CheckQualifyingData     Check = "qualifying_data"
	CheckPCRDigest          Check = "pcr_digest"
	CheckEventLog           Check = "event_log"
	CheckMeasurementProof   Check = "measurement_proof"
)

// Checks is every check, in the order Verify runs them.
var Checks = []Check{
	CheckMagic, CheckType, CheckAKAttributes, CheckAKCertificateChain, CheckSignature,
	CheckCertificate, CheckQualifyingData, CheckPCRDigest, CheckEventLog, CheckMeasurementProof,
}

const (
	// AKCertificateIdentity is the URI SAN the licensing CA puts in the attestation
	// key's certificate, and only there.
	AKCertificateIdentity = "spiffe://licensing.internal/tpm/attestation-key"
	// MeasurementPCR holds the root of the Merkle tree over the live enclave certificates.
	MeasurementPCR = 23
	// Domain separates our qualifying data from any other use of a quote.
	Domain = "licensing-attest-v1"
)

// TPMA_OBJECT bits an attestation key must (or must not) have.
const (
	attrFixedTPM            = 0x00000002
	attrFixedParent         = 0x00000010
	attrSensitiveDataOrigin = 0x00000020
	attrRestricted          = 0x00010000
	attrDecrypt             = 0x00020000
	attrSignEncrypt         = 0x00040000
)

// AttestationError says which check failed; do not connect to the enclave.
type AttestationError struct {
	Check  Check
	Detail string
}

func (e *AttestationError) Error() string {
	return fmt.Sprintf("attestation check '%s' failed: %s", e.Check, e.Detail)
}

func fail(check Check, format string, args ...any) *AttestationError {
	return &AttestationError{Check: check, Detail: fmt.Sprintf(format, args...)}
}

// CheckResult is one passed check and what it established.
type CheckResult struct {
	Check  Check
	Detail string
}

// Report is what a verified attestation established.
type Report struct {
	EnclaveCertificateSHA256 []byte
	ResetCount               uint32
	PCRValues                map[uint32][]byte
	Checks                   []CheckResult
}

// Options are the inputs a caller must bring itself: never taken from the attestation.
type Options struct {
	// Nonce is the one we sent.
	Nonce []byte
	// ExpectedCertificatePEM is the enclave certificate we are about to pin.
	ExpectedCertificatePEM string
	// TrustedCAPEM holds the licensing CA certificates, one PEM a certificate.
	TrustedCAPEM []string
	// Now is when certificate validity is checked; zero means time.Now().
	Now time.Time
}

// QualifyingValue is SHA-256("licensing-attest-v1" || nonce || SHA-256(certificate DER)).
func QualifyingValue(nonce, certificateSHA256 []byte) []byte {
	h := sha256.New()
	h.Write([]byte(Domain))
	h.Write(nonce)
	h.Write(certificateSHA256)
	return h.Sum(nil)
}

func merkleLeaf(value []byte) []byte {
	h := sha256.Sum256(append([]byte{0x00}, value...))
	return h[:]
}

func merkleNode(left, right []byte) []byte {
	h := sha256.New()
	h.Write([]byte{0x01})
	h.Write(left)
	h.Write(right)
	return h.Sum(nil)
}

var errMalformedProof = errors.New("malformed Merkle proof")

// MerkleRootFromProof is the root a leaf's sibling path (from the leaf up) leads to:
// leaves SHA-256(0x00 || value), nodes SHA-256(0x01 || left || right), an odd last node
// promoted. Too few or too many siblings, or an index out of range, is an error.
func MerkleRootFromProof(value []byte, leafIndex, leafCount uint64, siblings [][]byte) ([]byte, error) {
	if leafIndex >= leafCount {
		return nil, errMalformedProof
	}
	node, index, count, used := merkleLeaf(value), leafIndex, leafCount, 0
	next := func() ([]byte, bool) {
		if used >= len(siblings) {
			return nil, false
		}
		used++
		return siblings[used-1], true
	}
	for count > 1 {
		if index%2 == 1 {
			sibling, ok := next()
			if !ok {
				return nil, errMalformedProof
			}
			node = merkleNode(sibling, node)
		} else if index+1 < count {
			sibling, ok := next()
			if !ok {
				return nil, errMalformedProof
			}
			node = merkleNode(node, sibling)
		}
		index, count = index/2, count/2+count%2
	}
	if used != len(siblings) {
		return nil, errMalformedProof
	}
	return node, nil
}

// parseCertificate reads the first CERTIFICATE block of a PEM.
func parseCertificate(pemText string) (*x509.Certificate, error) {
	rest := []byte(pemText)
	for {
		block, more := pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no certificate in PEM")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
		rest = more
	}
}

// SplitPEM returns every certificate of a PEM bundle as its own PEM (Options.TrustedCAPEM
// takes one certificate an entry, so a CA file with several, a rotation, is split here).
func SplitPEM(bundle []byte) ([]string, error) {
	var out []string
	rest := bundle
	for {
		block, more := pem.Decode(rest)
		if block == nil {
			break
		}
		rest = more
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return nil, err
		}
		out = append(out, string(pem.EncodeToMemory(block)))
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM bundle")
	}
	return out, nil
}

// directlyIssuedBy is cryptography's verify_directly_issued_by: the issuer's name is
// the parent's subject and the parent's key signed the certificate. It asks nothing
// of the parent's extensions, as the Python verifier does not.
func directlyIssuedBy(cert, parent *x509.Certificate) bool {
	if !bytes.Equal(cert.RawIssuer, parent.RawSubject) {
		return false
	}
	return parent.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature) == nil
}

func checkChain(chainPEM, trustedPEM []string, akKey *ecdsa.PublicKey, now time.Time) (string, error) {
	var chain, anchors []*x509.Certificate
	for _, p := range chainPEM {
		c, err := parseCertificate(p)
		if err != nil {
			return "", fail(CheckAKCertificateChain, "a certificate does not parse")
		}
		chain = append(chain, c)
	}
	for _, p := range trustedPEM {
		c, err := parseCertificate(p)
		if err != nil {
			return "", fail(CheckAKCertificateChain, "a certificate does not parse")
		}
		anchors = append(anchors, c)
	}
	if len(chain) == 0 {
		return "", fail(CheckAKCertificateChain, "no AK certificate")
	}
	leaf := chain[0]
	uris := make([]string, 0, len(leaf.URIs))
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	if !slices.Equal(uris, []string{AKCertificateIdentity}) {
		return "", fail(CheckAKCertificateChain, "the leaf is not an attestation key certificate")
	}
	leafKey, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !leafKey.Equal(akKey) {
		return "", fail(CheckAKCertificateChain, "the AK certificate is for another key")
	}
	for _, c := range chain {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return "", fail(CheckAKCertificateChain, "a certificate is outside its validity")
		}
	}
	current := leaf
	issuers := append(slices.Clone(chain[1:]), nil)
	for _, issuer := range issuers {
		for _, anchor := range anchors {
			if directlyIssuedBy(current, anchor) {
				return fmt.Sprintf("issued by trusted CA '%s'", anchor.Subject.String()), nil
			}
		}
		if issuer == nil {
			break
		}
		if !directlyIssuedBy(current, issuer) {
			return "", fail(CheckAKCertificateChain, "the chain is broken")
		}
		current = issuer
	}
	return "", fail(CheckAKCertificateChain, "the AK certificate does not chain to a trusted CA")
}

func equal(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// Verify runs every check on an attestation, in order; the first failure is an
// *AttestationError. The nonce and the expected certificate come from the caller.
func Verify(a *licensingv1.Attestation, opts Options) (*Report, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	var results []CheckResult
	passed := func(check Check, format string, args ...any) {
		results = append(results, CheckResult{check, fmt.Sprintf(format, args...)})
	}

	attest, err := ParseAttest(a.GetQuote())
	if err != nil {
		return nil, fail(CheckMagic, "the quote does not parse (%v)", err)
	}
	if attest.Magic != tpm2.TPMGeneratedValue {
		return nil, fail(CheckMagic, "magic is 0x%08x, not TPM_GENERATED", uint32(attest.Magic))
	}
	passed(CheckMagic, "TPM_GENERATED")
	if attest.Type != tpm2.TPMSTAttestQuote {
		return nil, fail(CheckType, "type is 0x%04x, not TPM_ST_ATTEST_QUOTE", uint16(attest.Type))
	}
	passed(CheckType, "TPM_ST_ATTEST_QUOTE")

	ak, err := ParsePublic(a.GetAkPublic())
	if err != nil {
		return nil, fail(CheckAKAttributes, "the AK public area does not parse (%v)", err)
	}
	required := uint32(attrRestricted | attrSignEncrypt | attrFixedTPM | attrFixedParent | attrSensitiveDataOrigin)
	if ak.Attributes&required != required || ak.Attributes&attrDecrypt != 0 {
		return nil, fail(CheckAKAttributes, "attributes 0x%08x are not an AK's", ak.Attributes)
	}
	if ak.Curve != tpm2.TPMECCNistP256 || ak.Scheme != tpm2.TPMAlgECDSA {
		return nil, fail(CheckAKAttributes, "the AK is not an ECDSA P-256 key")
	}
	x, y := new(big.Int).SetBytes(ak.X), new(big.Int).SetBytes(ak.Y)
	p256 := elliptic.P256()
	if x.Cmp(p256.Params().P) >= 0 || y.Cmp(p256.Params().P) >= 0 || !p256.IsOnCurve(x, y) {
		return nil, fail(CheckAKAttributes, "the AK point is not on P-256")
	}
	akKey := &ecdsa.PublicKey{Curve: p256, X: x, Y: y}
	passed(CheckAKAttributes, "restricted, sign, fixedTPM, fixedParent")

	detail, err := checkChain(a.GetAkCertificateChainPem(), opts.TrustedCAPEM, akKey, now)
	if err != nil {
		return nil, err
	}
	passed(CheckAKCertificateChain, "%s", detail)

	signature, err := ParseSignature(a.GetSignature())
	if err != nil {
		return nil, fail(CheckSignature, "the signature does not parse (%v)", err)
	}
	if signature.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, fail(CheckSignature, "the signature is not over SHA-256")
	}
	quoteHash := sha256.Sum256(a.GetQuote())
	r, s := new(big.Int).SetBytes(signature.R), new(big.Int).SetBytes(signature.S)
	if !ecdsa.Verify(akKey, quoteHash[:], r, s) {
		return nil, fail(CheckSignature, "the quote's signature does not verify with the AK")
	}
	passed(CheckSignature, "ECDSA P-256 by the certified AK")

	expected, err1 := parseCertificate(opts.ExpectedCertificatePEM)
	attested, err2 := parseCertificate(a.GetEnclaveCertificatePem())
	if err1 != nil || err2 != nil {
		return nil, fail(CheckCertificate, "a certificate does not parse")
	}
	certHashArray := sha256.Sum256(expected.Raw)
	certHash := certHashArray[:]
	if !equal(attested.Raw, expected.Raw) || !equal(a.GetEnclaveCertificateSha256(), certHash) {
		return nil, fail(CheckCertificate, "the attestation is about another certificate")
	}
	passed(CheckCertificate, "SHA-256 %s", hex.EncodeToString(certHash))

	value := QualifyingValue(opts.Nonce, certHash)
	proof := a.GetMerkleProof()
	batch := ""
	if proof.GetLeafCount() > 1 {
		value, err = MerkleRootFromProof(value, proof.GetLeafIndex(), proof.GetLeafCount(), proof.GetSiblings())
		if err != nil {
			return nil, fail(CheckQualifyingData, "the Merkle proof is malformed")
		}
		batch = fmt.Sprintf(" (leaf %d of %d)", proof.GetLeafIndex(), proof.GetLeafCount())
	}
	if !equal(attest.ExtraData, value) {
		return nil, fail(CheckQualifyingData, "qualifying data does not bind our nonce to this certificate")
	}
	passed(CheckQualifyingData, "nonce and certificate bound%s", batch)

	values := map[uint32][]byte{}
	for _, v := range a.GetPcrValues() {
		values[v.GetPcr()] = v.GetValue()
	}
	var selected []uint32
	otherBank := false
	for _, sel := range attest.PCRSelections {
		if sel.HashAlg != tpm2.TPMAlgSHA256 {
			otherBank = true
			continue
		}
		selected = append(selected, sel.PCRs...)
	}
	returned := make([]uint32, 0, len(values))
	for pcr := range values {
		returned = append(returned, pcr)
	}
	sortedSelected := slices.Clone(selected)
	slices.Sort(returned)
	slices.Sort(sortedSelected)
	if otherBank || !slices.Equal(returned, sortedSelected) {
		return nil, fail(CheckPCRDigest, "the returned PCRs are not the quoted selection")
	}
	h := sha256.New()
	for _, pcr := range selected {
		h.Write(values[pcr])
	}
	if !equal(h.Sum(nil), attest.PCRDigest) {
		return nil, fail(CheckPCRDigest, "the PCR values do not match the quoted digest")
	}
	passed(CheckPCRDigest, "PCRs %s", pythonList(selected))

	measured, ok := values[MeasurementPCR]
	if !ok {
		return nil, fail(CheckEventLog, "PCR %d is not quoted", MeasurementPCR)
	}
	events := slices.Clone(a.GetEventLog())
	sort.SliceStable(events, func(i, j int) bool { return events[i].GetSequence() < events[j].GetSequence() })
	replayed, root := make([]byte, 32), []byte(nil)
	for _, event := range events {
		if event.GetPcr() != MeasurementPCR {
			continue
		}
		root = event.GetDigest()
		if root == nil {
			root = []byte{}
		}
		next := sha256.Sum256(append(slices.Clone(replayed), root...))
		replayed = next[:]
	}
	if !equal(replayed, measured) {
		return nil, fail(CheckEventLog, "the event log does not replay to PCR %d", MeasurementPCR)
	}
	if root == nil {
		return nil, fail(CheckEventLog, "nothing was measured into PCR %d", MeasurementPCR)
	}
	passed(CheckEventLog, "replays to PCR %d; set root %s", MeasurementPCR, hex.EncodeToString(root))

	// The last extend is the root of the tree over the live certificates: the
	// certificate must be one of its leaves.
	mproof := a.GetMeasurementProof()
	count := mproof.GetLeafCount()
	if count < 1 {
		return nil, fail(CheckMeasurementProof, "no proof that the certificate was measured")
	}
	index := mproof.GetLeafIndex()
	computed, err := MerkleRootFromProof(certHash, index, count, mproof.GetSiblings())
	if err != nil {
		return nil, fail(CheckMeasurementProof, "the measurement proof is malformed")
	}
	if !equal(computed, root) {
		return nil, fail(CheckMeasurementProof, "the certificate is not in the set measured into PCR %d", MeasurementPCR)
	}
	passed(CheckMeasurementProof, "leaf %d of %d live certificates", index, count)
	return &Report{EnclaveCertificateSHA256: certHash, ResetCount: attest.ResetCount, PCRValues: values, Checks: results}, nil
}

// pythonList spells PCR numbers as the Python report does: [16, 23].
func pythonList(values []uint32) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, v := range values {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d", v)
	}
	b.WriteByte(']')
	return b.String()
}
