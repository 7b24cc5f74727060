package attestation

// The few TPM 2.0 structures a verifier reads, decoded strictly: a missing or trailing
// byte is an error. TPMS_ATTEST is read here by hand, as the Python client does, so a
// quote of another attestation type parses far enough to fail the "type" check (go-tpm
// would decode that type's body instead); the AK's public area and the signature are
// decoded with go-tpm's tpm2 package and re-encoded to prove nothing was left over.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

var errTruncated = errors.New("truncated structure")

// reader walks a TPM structure big-endian, failing on any read past its end.
type reader struct {
	data []byte
	at   int
	err  error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || r.at+n > len(r.data) {
		r.err = errTruncated
		return nil
	}
	chunk := r.data[r.at : r.at+n]
	r.at += n
	return chunk
}

func (r *reader) u8() uint8 {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) sized() []byte { return r.take(int(r.u16())) }

func (r *reader) end() error {
	if r.err != nil {
		return r.err
	}
	if r.at != len(r.data) {
		return errors.New("trailing bytes after structure")
	}
	return nil
}

// PCRSelection is one TPMS_PCR_SELECTION of a quote.
type PCRSelection struct {
	HashAlg tpm2.TPMAlgID
	PCRs    []uint32
}

// Attest is the TPMS_ATTEST a quote's signature covers.
type Attest struct {
	Magic           tpm2.TPMGenerated
	Type            tpm2.TPMST
	QualifiedSigner []byte
	ExtraData       []byte
	Clock           uint64
	ResetCount      uint32
	RestartCount    uint32
	Safe            bool
	FirmwareVersion uint64
	PCRSelections   []PCRSelection
	PCRDigest       []byte
}

// ParseAttest decodes TPMS_ATTEST; a type other than a quote stops after the header.
func ParseAttest(data []byte) (*Attest, error) {
	r := &reader{data: data}
	a := &Attest{Magic: tpm2.TPMGenerated(r.u32()), Type: tpm2.TPMST(r.u16())}
	a.QualifiedSigner, a.ExtraData = r.sized(), r.sized()
	a.Clock, a.ResetCount, a.RestartCount, a.Safe = r.u64(), r.u32(), r.u32(), r.u8() != 0
	a.FirmwareVersion = r.u64()
	if r.err != nil {
		return nil, r.err
	}
	if a.Type != tpm2.TPMSTAttestQuote {
		return a, nil // other attestation types have other bodies: the caller reports the type
	}
	count := r.u32()
	for i := uint32(0); i < count && r.err == nil; i++ {
		sel := PCRSelection{HashAlg: tpm2.TPMAlgID(r.u16())}
		bitmap := r.take(int(r.u8()))
		for byteIndex, bits := range bitmap {
			for bit := 0; bit < 8; bit++ {
				if bits&(1<<bit) != 0 {
					sel.PCRs = append(sel.PCRs, uint32(byteIndex*8+bit))
				}
			}
		}
		a.PCRSelections = append(a.PCRSelections, sel)
	}
	a.PCRDigest = r.sized()
	if err := r.end(); err != nil {
		return nil, err
	}
	return a, nil
}

// unmarshalExactly decodes a T with go-tpm and fails unless it used every byte.
func unmarshalExactly[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](data []byte) (value *T, err error) {
	defer func() {
		if p := recover(); p != nil { // go-tpm decodes by reflection: junk must not crash us
			value, err = nil, fmt.Errorf("malformed structure (%v)", p)
		}
	}()
	value, err = tpm2.Unmarshal[T, P](data)
	if err != nil {
		return nil, err
	}
	if len(tpm2.Marshal(*value)) != len(data) {
		return nil, errors.New("trailing bytes after structure")
	}
	return value, nil
}

// ECCPublic is what the verifier reads of the attestation key's TPMT_PUBLIC.
type ECCPublic struct {
	NameAlg    tpm2.TPMAlgID
	Attributes uint32
	Scheme     tpm2.TPMAlgID
	Curve      tpm2.TPMECCCurve
	X, Y       []byte
	// Raw is the TPMT_PUBLIC bytes (the TPM name is computed over them).
	Raw []byte
}

// ParsePublic decodes the TPM2B_PUBLIC of an ECC key (the attestation key).
func ParsePublic(data []byte) (*ECCPublic, error) {
	r := &reader{data: data}
	raw := r.sized()
	if err := r.end(); err != nil {
		return nil, err
	}
	public, err := unmarshalExactly[tpm2.TPMTPublic](raw)
	if err != nil {
		return nil, err
	}
	if public.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("key type 0x%04x is not ECC", uint16(public.Type))
	}
	parms, err := public.Parameters.ECCDetail()
	if err != nil {
		return nil, err
	}
	point, err := public.Unique.ECC()
	if err != nil {
		return nil, err
	}
	// TPMT_PUBLIC starts type (2), nameAlg (2), objectAttributes (4): read the bits as sent.
	attributes := binary.BigEndian.Uint32(raw[4:8])
	return &ECCPublic{
		NameAlg:    public.NameAlg,
		Attributes: attributes,
		Scheme:     tpm2.TPMAlgID(parms.Scheme.Scheme),
		Curve:      tpm2.TPMECCCurve(parms.CurveID),
		X:          bytes.Clone(point.X.Buffer),
		Y:          bytes.Clone(point.Y.Buffer),
		Raw:        raw,
	}, nil
}

// ECDSASignature is a TPMT_SIGNATURE made with ECDSA.
type ECDSASignature struct {
	HashAlg tpm2.TPMAlgID
	R, S    []byte
}

// ParseSignature decodes TPMT_SIGNATURE; only ECDSA is accepted (what our AK makes).
func ParseSignature(data []byte) (*ECDSASignature, error) {
	signature, err := unmarshalExactly[tpm2.TPMTSignature](data)
	if err != nil {
		return nil, err
	}
	if signature.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("signature algorithm 0x%04x is not ECDSA", uint16(signature.SigAlg))
	}
	ecc, err := signature.Signature.ECDSA()
	if err != nil {
		return nil, err
	}
	return &ECDSASignature{HashAlg: ecc.Hash, R: ecc.SignatureR.Buffer, S: ecc.SignatureS.Buffer}, nil
}
