package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	. "github.com/onsi/gomega"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		f    Frame
	}{
		{"an empty control frame", Frame{Stream: 0, Type: TypeShutdown}},
		{"a data frame on a session stream with the end flag", Frame{Stream: 7, Type: TypeStdout, Flags: FlagEnd, Payload: []byte("hello\n")}},
		{"a frame of exactly MaxPayload bytes", Frame{Stream: 1 << 31, Type: TypeStdin, Payload: bytes.Repeat([]byte{0xAB}, MaxPayload)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			var buf bytes.Buffer
			g.Expect(WriteFrame(&buf, tt.f)).To(Succeed())
			g.Expect(buf.Len()).To(Equal(headerSize + len(tt.f.Payload)))
			got, err := ReadFrame(&buf)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Stream).To(Equal(tt.f.Stream))
			g.Expect(got.Type).To(Equal(tt.f.Type))
			g.Expect(got.Flags).To(Equal(tt.f.Flags))
			g.Expect(got.Payload).To(HaveLen(len(tt.f.Payload)))
			g.Expect(bytes.Equal(got.Payload, tt.f.Payload)).To(BeTrue())
			_, err = ReadFrame(&buf)
			g.Expect(err).To(MatchError(io.EOF), "a clean end between frames is io.EOF")
		})
	}
}

func TestWriteFrameRejectsOversizedPayloads(t *testing.T) {
	g := NewWithT(t)
	var buf bytes.Buffer
	g.Expect(WriteFrame(&buf, Frame{Payload: make([]byte, MaxPayload+1)})).To(MatchError(ErrFrameTooLarge))
	g.Expect(buf.Len()).To(BeZero(), "nothing is written")
}

func TestReadFrameErrors(t *testing.T) {
	frame := func(f Frame) []byte {
		var b bytes.Buffer
		if err := WriteFrame(&b, f); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	full := frame(Frame{Stream: 3, Type: TypeStdout, Payload: []byte("0123456789")})
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"nothing at all is a clean EOF", nil, io.EOF},
		{"a cut header is an unexpected EOF", full[:5], io.ErrUnexpectedEOF},
		{"a cut payload is an unexpected EOF", full[:len(full)-1], io.ErrUnexpectedEOF},
		{"a length above MaxPayload is refused before reading it", []byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 1, 0}, ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			_, err := ReadFrame(bytes.NewReader(tt.in))
			g.Expect(errors.Is(err, tt.want)).To(BeTrue(), "got %v", err)
		})
	}
}

func TestEncodeDecode(t *testing.T) {
	g := NewWithT(t)
	f, err := Encode(0, TypeHello, Hello{Version: Version, Agent: "sandbox-init test", BootNanos: 42})
	g.Expect(err).NotTo(HaveOccurred())
	var buf bytes.Buffer
	g.Expect(WriteFrame(&buf, f)).To(Succeed())
	got, err := ReadFrame(&buf)
	g.Expect(err).NotTo(HaveOccurred())
	var h Hello
	g.Expect(Decode(got, &h)).To(Succeed())
	g.Expect(h).To(Equal(Hello{Version: Version, Agent: "sandbox-init test", BootNanos: 42}))

	g.Expect(Decode(Frame{Type: TypeExec, Stream: 9, Payload: []byte("{not json")}, &Exec{})).To(
		MatchError(ContainSubstring("decoding type 16 on stream 9")))
}

// TestStartNetworkIsAdditive pins Start.Network's wire form: absent when
// nil, so a Start without one encodes as it did before the field existed.
func TestStartNetworkIsAdditive(t *testing.T) {
	g := NewWithT(t)
	b, err := json.Marshal(Start{Argv: []string{"true"}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(Equal(`{"argv":["true"]}`))

	b, err = json.Marshal(Start{Network: &Network{MAC: "52:54:00:12:34:56", Address: "10.0.2.15/24", Gateway: "10.0.2.2",
		Nameservers: []string{"10.0.2.3"}, Search: []string{"svc.local"}, MTU: 9000}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(Equal(`{"argv":null,"network":{"mac":"52:54:00:12:34:56","address":"10.0.2.15/24",` +
		`"gateway":"10.0.2.2","nameservers":["10.0.2.3"],"search":["svc.local"],"mtu":9000}}`))
}

func TestNegotiate(t *testing.T) {
	g := NewWithT(t)
	v, err := Negotiate(1, 1)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v).To(Equal(1))
	v, err = Negotiate(3, 2)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(v).To(Equal(2), "the older peer's version")
	_, err = Negotiate(1, 0)
	g.Expect(err).To(HaveOccurred())
}

// FuzzReadFrame feeds arbitrary bytes to the decoder: it must never panic,
// never allocate more than MaxPayload for one frame, and every frame it
// returns must encode back to the bytes it was read from.
func FuzzReadFrame(f *testing.F) {
	seed := func(fr Frame) []byte {
		var b bytes.Buffer
		_ = WriteFrame(&b, fr)
		return b.Bytes()
	}
	f.Add(seed(Frame{Type: TypeHello, Payload: []byte(`{"version":1}`)}))
	f.Add(seed(Frame{Stream: 5, Type: TypeStdout, Flags: FlagEnd, Payload: []byte("x")}))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 3, 0, 0, 0, 1, 18})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		consumed := 0
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				if len(data)-consumed >= headerSize && !errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error with %d bytes left: %v", len(data)-consumed, err)
				}
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			var b bytes.Buffer
			if err := WriteFrame(&b, fr); err != nil {
				t.Fatalf("re-encoding a decoded frame: %v", err)
			}
			if !bytes.Equal(b.Bytes(), data[consumed:consumed+b.Len()]) {
				t.Fatalf("frame does not re-encode to its input")
			}
			consumed += b.Len()
		}
	})
}
