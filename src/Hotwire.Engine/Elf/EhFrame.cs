namespace Hotwire.Elf;

/// <summary>One frame description (FDE) of <c>.eh_frame</c>: a code range and what its unwind rules say about its first byte.</summary>
/// <param name="Start">First address of the range (link-time).</param>
/// <param name="Size">Length of the range in bytes.</param>
/// <param name="EntryLike">
/// At <paramref name="Start"/>, before any instruction of the range ran, the canonical frame address is
/// <c>rsp + 8</c> (only the return address is on the stack), and the CIE is not a signal frame's: what a
/// function's entry looks like. A <c>.cold</c> fragment split off a function, or a trampoline, starts
/// with its caller's frame set up and fails this test (the survey's "CFA at entry" rule).
/// </param>
public readonly record struct FrameDescription(ulong Start, ulong Size, bool EntryLike);

/// <summary>
/// Reads the FDEs of <c>.eh_frame</c> (the LSB's format: CIEs with a 'z' augmentation and pointer
/// encodings). Written here because no maintained .NET library reads call-frame information; only
/// what function discovery needs is decoded: each FDE's range, and the unwind rules up to its first
/// location advance.
/// </summary>
public static class EhFrame
{
    private const int RegisterRsp = 7;

    /// <summary>The FDEs of <paramref name="elf"/>'s <c>.eh_frame</c>; empty when it has none. Malformed records end the walk.</summary>
    public static List<FrameDescription> Read(ElfFile elf)
    {
        var result = new List<FrameDescription>();
        if (elf.FindSection(".eh_frame") is not ElfSection section || section.Type == ElfFile.SHT_NOBITS)
        {
            return result;
        }
        ReadOnlySpan<byte> data = elf.SectionData(section);
        var cies = new Dictionary<int, Cie?>();
        int at = 0;
        while (at + 4 <= data.Length)
        {
            ulong length = ElfFile.U32(data, at);
            int headerBytes = 4;
            if (length == 0)
            {
                break; // the terminator
            }
            if (length == 0xffff_ffff)
            {
                if (at + 12 > data.Length)
                {
                    break;
                }
                length = ElfFile.U64(data, at + 4);
                headerBytes = 12;
            }
            int body = at + headerBytes;
            if (length > (ulong)(data.Length - body) || length < 4)
            {
                break;
            }
            int end = body + (int)length;
            uint id = ElfFile.U32(data, body);
            if (id != 0)
            {
                int cieAt = body - (int)id;
                if (!cies.TryGetValue(cieAt, out Cie? cie))
                {
                    cie = cieAt >= 0 && cieAt < data.Length ? ParseCie(data, cieAt) : null;
                    cies[cieAt] = cie;
                }
                if (cie is not null && ParseFde(data, section.Address, body + 4, end, cie) is FrameDescription fde)
                {
                    result.Add(fde);
                }
            }
            at = end;
        }
        return result;
    }

    private sealed record Cie(byte PointerEncoding, bool HasAugmentationData, bool SignalFrame, long DataAlignment, bool EntryLike);

    private static Cie? ParseCie(ReadOnlySpan<byte> data, int at)
    {
        try
        {
            ulong length = ElfFile.U32(data, at);
            int body = at + 4;
            if (length == 0xffff_ffff)
            {
                length = ElfFile.U64(data, at + 4);
                body = at + 12;
            }
            int end = body + (int)length;
            if (end > data.Length || ElfFile.U32(data, body) != 0)
            {
                return null;
            }
            int p = body + 4;
            byte version = data[p++];
            int augStart = p;
            while (data[p] != 0)
            {
                p++;
            }
            string augmentation = System.Text.Encoding.ASCII.GetString(data[augStart..p]);
            p++;
            if (version >= 4)
            {
                p += 2; // address_size, segment_size
            }
            Uleb(data, ref p);                   // code alignment
            long dataAlignment = Sleb(data, ref p);
            if (version == 1)
            {
                p++;
            }
            else
            {
                Uleb(data, ref p);               // return address register
            }
            byte encoding = 0; // absptr
            bool signal = false;
            bool z = augmentation.StartsWith('z');
            if (z)
            {
                ulong augLength = Uleb(data, ref p);
                int augEnd = p + (int)augLength;
                foreach (char c in augmentation.AsSpan(1))
                {
                    switch (c)
                    {
                        case 'R': encoding = data[p++]; break;
                        case 'L': p++; break;
                        case 'P':
                            byte personality = data[p++];
                            ReadEncoded(data, ref p, personality, 0);
                            break;
                        case 'S': signal = true; break;
                        case 'B': break;
                        default: p = augEnd; break; // unknown: skip the rest by its length
                    }
                }
                p = augEnd;
            }
            else if (augmentation.Length > 0)
            {
                return null; // an augmentation without 'z' cannot be skipped
            }
            // The initial instructions: the CFA every FDE of this CIE starts with.
            CfaState state = new(-1, 0, true);
            state = Interpret(data, p, end, dataAlignment, state, stopAtAdvance: false);
            return new Cie(encoding, z, signal, dataAlignment, state.Known && state.Register == RegisterRsp && state.Offset == 8);
        }
        catch (IndexOutOfRangeException)
        {
            return null;
        }
        catch (ArgumentOutOfRangeException)
        {
            return null;
        }
    }

    private static FrameDescription? ParseFde(ReadOnlySpan<byte> data, ulong sectionAddress, int p, int end, Cie cie)
    {
        try
        {
            ulong start = ReadEncoded(data, ref p, cie.PointerEncoding, sectionAddress);
            ulong size = ReadEncoded(data, ref p, (byte)(cie.PointerEncoding & 0x0f), 0);
            if (cie.HasAugmentationData)
            {
                ulong augLength = Uleb(data, ref p);
                p += (int)augLength;
            }
            if (start == 0 || size == 0)
            {
                return null; // a discarded function's FDE (start 0 after linking)
            }
            bool entryLike = false;
            if (cie.EntryLike && !cie.SignalFrame)
            {
                CfaState state = Interpret(data, p, end, cie.DataAlignment, new CfaState(RegisterRsp, 8, true), stopAtAdvance: true);
                entryLike = state.Known && state.Register == RegisterRsp && state.Offset == 8;
            }
            return new FrameDescription(start, size, entryLike);
        }
        catch (IndexOutOfRangeException)
        {
            return null;
        }
        catch (ArgumentOutOfRangeException)
        {
            return null;
        }
    }

    private readonly record struct CfaState(int Register, long Offset, bool Known);

    /// <summary>
    /// Applies call-frame instructions to the CFA rule (register + offset) until <paramref name="end"/>, or the
    /// first location advance when <paramref name="stopAtAdvance"/>. An instruction it cannot size makes the rule unknown.
    /// </summary>
    private static CfaState Interpret(ReadOnlySpan<byte> data, int p, int end, long dataAlignment, CfaState state, bool stopAtAdvance)
    {
        while (p < end)
        {
            byte op = data[p++];
            switch (op >> 6)
            {
                case 1: // DW_CFA_advance_loc
                    if (stopAtAdvance)
                    {
                        return state;
                    }
                    continue;
                case 2: // DW_CFA_offset: register in the low bits, ULEB offset
                    Uleb(data, ref p);
                    continue;
                case 3: // DW_CFA_restore
                    continue;
            }
            switch (op)
            {
                case 0x00: break;                                      // nop
                case 0x01:                                             // set_loc
                case 0x02: case 0x03: case 0x04:                       // advance_loc1/2/4
                    if (stopAtAdvance)
                    {
                        return state;
                    }
                    p += op switch { 0x02 => 1, 0x03 => 2, 0x04 => 4, _ => 8 };
                    break;
                case 0x05: Uleb(data, ref p); Uleb(data, ref p); break; // offset_extended
                case 0x06: case 0x07: case 0x08: Uleb(data, ref p); break; // restore_extended, undefined, same_value
                case 0x09: Uleb(data, ref p); Uleb(data, ref p); break; // register
                case 0x0a: case 0x0b:                                  // remember_state, restore_state
                    break;
                case 0x0c:                                             // def_cfa
                    state = new CfaState((int)Uleb(data, ref p), (long)Uleb(data, ref p), true);
                    break;
                case 0x0d:                                             // def_cfa_register
                    state = state with { Register = (int)Uleb(data, ref p) };
                    break;
                case 0x0e:                                             // def_cfa_offset
                    state = state with { Offset = (long)Uleb(data, ref p) };
                    break;
                case 0x0f:                                             // def_cfa_expression
                    p += (int)Uleb(data, ref p);
                    state = state with { Known = false };
                    break;
                case 0x10: case 0x16:                                  // expression, val_expression
                    Uleb(data, ref p);
                    p += (int)Uleb(data, ref p);
                    break;
                case 0x11: case 0x14: case 0x15:                       // offset_extended_sf, val_offset, val_offset_sf
                    Uleb(data, ref p);
                    Sleb(data, ref p);
                    break;
                case 0x12:                                             // def_cfa_sf
                    state = new CfaState((int)Uleb(data, ref p), Sleb(data, ref p) * dataAlignment, true);
                    break;
                case 0x13:                                             // def_cfa_offset_sf
                    state = state with { Offset = Sleb(data, ref p) * dataAlignment };
                    break;
                case 0x2e: Uleb(data, ref p); break;                   // GNU_args_size
                case 0x2f: Uleb(data, ref p); Uleb(data, ref p); break; // GNU_negative_offset_extended
                default:
                    return state with { Known = false };
            }
        }
        return state;
    }

    private static ulong ReadEncoded(ReadOnlySpan<byte> data, ref int p, byte encoding, ulong sectionAddress)
    {
        if (encoding == 0xff)
        {
            return 0; // DW_EH_PE_omit
        }
        ulong fieldAddress = sectionAddress + (ulong)p;
        ulong value;
        switch (encoding & 0x0f)
        {
            case 0x00: value = ElfFile.U64(data, p); p += 8; break;
            case 0x01: value = Uleb(data, ref p); break;
            case 0x02: value = ElfFile.U16(data, p); p += 2; break;
            case 0x03: value = ElfFile.U32(data, p); p += 4; break;
            case 0x04: value = ElfFile.U64(data, p); p += 8; break;
            case 0x09: value = (ulong)Sleb(data, ref p); break;
            case 0x0a: value = (ulong)(long)(short)ElfFile.U16(data, p); p += 2; break;
            case 0x0b: value = (ulong)(long)(int)ElfFile.U32(data, p); p += 4; break;
            case 0x0c: value = ElfFile.U64(data, p); p += 8; break;
            default: throw new ArgumentOutOfRangeException(nameof(encoding));
        }
        switch (encoding & 0x70)
        {
            case 0x00: break;
            case 0x10: value += fieldAddress; break; // pcrel
            default: throw new ArgumentOutOfRangeException(nameof(encoding)); // datarel, textrel, funcrel: not used on x86-64
        }
        return value;
    }

    private static ulong Uleb(ReadOnlySpan<byte> data, ref int p)
    {
        ulong value = 0;
        int shift = 0;
        byte b;
        do
        {
            b = data[p++];
            if (shift < 64)
            {
                value |= (ulong)(b & 0x7f) << shift;
            }
            shift += 7;
        }
        while ((b & 0x80) != 0);
        return value;
    }

    private static long Sleb(ReadOnlySpan<byte> data, ref int p)
    {
        long value = 0;
        int shift = 0;
        byte b;
        do
        {
            b = data[p++];
            if (shift < 64)
            {
                value |= (long)(b & 0x7f) << shift;
            }
            shift += 7;
        }
        while ((b & 0x80) != 0);
        if (shift < 64 && (b & 0x40) != 0)
        {
            value |= -1L << shift;
        }
        return value;
    }
}
