// Encodes one instance of every message of the NRI API with the upstream Go stub (api.pb.go, as
// a release published it) and prints "<full message name> <hex>" per line, for
// tests/upstream_api.rs to decode with podmap's generated types.
//
// Every field is set, through reflection so that no field of the release is missed: scalars to
// values derived from the field number (negative for signed ones, to catch a sign or zigzag
// mismatch), enums to their last value, messages to a filled instance (three levels deep),
// repeated fields to two elements, maps to one entry (the Rust side re-encodes a map in hash
// order, so a single entry keeps the bytes comparable), one member per oneof. Marshalling is
// deterministic, fields in number order, as the runtimes send them.
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"sort"

	api "nriapi"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

const depth = 3

func scalar(fd protoreflect.FieldDescriptor, i int) protoreflect.Value {
	n := int64(fd.Number())*7 + int64(i)
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-n - 1))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-n*1000003 - 1)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(n + 1))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n)*1000003 + 1)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n) + 0.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n) + 0.25)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", fd.Name(), i))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(n), byte(i), 0xff})
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		return protoreflect.ValueOfEnum(values.Get(values.Len() - 1).Number())
	}
	panic(fmt.Sprintf("kind %v of %s", fd.Kind(), fd.FullName()))
}

func fill(m protoreflect.Message, level int) {
	if level > depth {
		return
	}
	fields := m.Descriptor().Fields()
	seenOneof := map[protoreflect.FullName]bool{}
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() {
			if seenOneof[o.FullName()] {
				continue
			}
			seenOneof[o.FullName()] = true
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			key := scalar(fd.MapKey(), 0).MapKey()
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v := mp.NewValue()
				fill(v.Message(), level+1)
				mp.Set(key, v)
			} else {
				mp.Set(key, scalar(fd.MapValue(), 0))
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for j := 0; j < 2; j++ {
				if fd.Kind() == protoreflect.MessageKind {
					v := l.NewElement()
					fill(v.Message(), level+1)
					l.Append(v)
				} else {
					l.Append(scalar(fd, j))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			fill(m.Mutable(fd).Message(), level+1)
		default:
			m.Set(fd, scalar(fd, 0))
		}
	}
}

func main() {
	var names []string
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		d := mt.Descriptor()
		if d.ParentFile() == api.File_pkg_api_api_proto && !d.IsMapEntry() {
			names = append(names, string(d.FullName()))
		}
		return true
	})
	if len(names) == 0 {
		fmt.Fprintln(os.Stderr, "encode: no message of the NRI API is registered")
		os.Exit(1)
	}
	sort.Strings(names)
	for _, name := range names {
		mt, _ := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(name))
		m := mt.New()
		fill(m, 0)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m.Interface())
		if err != nil {
			fmt.Fprintf(os.Stderr, "encode: %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Printf("%s %s\n", name, hex.EncodeToString(b))
	}
}
