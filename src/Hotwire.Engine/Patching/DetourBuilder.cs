using Iced.Intel;

namespace Hotwire.Patching;

/// <summary>A detour's bytes and where its parts are.</summary>
/// <param name="Code">The bytes, to be placed at the detour's address.</param>
/// <param name="Entry">Offset of the detour's entry (where the jmp at the function's entry goes): a 5-byte NOP, the detour's own patch site.</param>
/// <param name="Relocated">Offset of the relocated instructions (what a thread caught at the function's entry by the int3 continues at).</param>
/// <param name="Boundaries">
/// For each relocated instruction after the first: its offset from the entry's first rewritten byte,
/// and the offset of its copy in <paramref name="Code"/>. A thread found at such a boundary while the
/// entry is rewritten is moved to the copy (it has run the instructions before it).
/// </param>
public readonly record struct Detour(byte[] Code, int Entry, int Relocated, IReadOnlyList<(int Original, int Copy)> Boundaries);

/// <summary>
/// Builds the detour of a relocatable entry (<see cref="EntryClassifier"/>): a literal holding the
/// original return point, a 5-byte NOP (the site tracers and live patches use, as on a compiler site),
/// the relocated instructions, and a <c>jmp</c> back to the first byte after them. Iced's
/// <see cref="BlockEncoder"/> re-targets RIP-relative operands and relative branches for the new address
/// (and widens a short branch that no longer reaches). A final <c>call</c> becomes <c>push</c> of the
/// original return address and <c>jmp</c> to the callee: the callee returns straight into the function,
/// and unwinders and backtraces see the same return address as without the detour.
/// Pure: bytes in, bytes out; executed differentially against the original by the tests.
/// </summary>
public static class DetourBuilder
{
    /// <summary>The detour's first bytes: the literal (the address after the relocated instructions).</summary>
    public const int LiteralBytes = 8;

    private static readonly byte[] Nop5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];

    /// <summary>
    /// The detour for <paramref name="plan"/>, to be placed at <paramref name="address"/>.
    /// <paramref name="original"/> holds the function's bytes from <see cref="EntryPlan.Patch"/> on (at least <see cref="EntryPlan.Length"/>).
    /// </summary>
    /// <exception cref="HotwireException">The detour is too far for a RIP-relative operand or branch of the relocated code.</exception>
    public static Detour Build(ReadOnlySpan<byte> original, EntryPlan plan, ulong address)
    {
        if (plan.Kind != EntryKind.Relocatable || original.Length < plan.Length)
        {
            throw new ArgumentException("the plan is not a relocatable entry, or its bytes are missing", nameof(plan));
        }
        ulong back = plan.Patch + (ulong)plan.Length;
        ulong literal = address;
        int entry = LiteralBytes;
        int relocated = entry + Nop5.Length;

        var decoder = Decoder.Create(64, new ByteArrayCodeReader(original[..plan.Length].ToArray()), plan.Patch);
        var instructions = new List<Instruction>(plan.Instructions + 2);
        var starts = new List<(int Original, int Index)>(plan.Instructions);
        bool fallsThrough = true;
        for (int i = 0; i < plan.Instructions; i++)
        {
            decoder.Decode(out Instruction instruction);
            starts.Add(((int)(instruction.IP - plan.Patch), instructions.Count));
            bool last = i == plan.Instructions - 1;
            if (last && instruction.FlowControl is FlowControl.Call or FlowControl.IndirectCall && !TestSwitches.PlainDetourCall)
            {
                // push qword [literal]; jmp to the callee (same operand)
                instructions.Add(Instruction.Create(Code.Push_rm64, new MemoryOperand(Register.RIP, (long)literal)));
                instructions.Add(AsJump(instruction));
                fallsThrough = false;
                continue;
            }
            if (last && instruction.FlowControl is FlowControl.UnconditionalBranch or FlowControl.IndirectBranch or FlowControl.Return)
            {
                fallsThrough = false;
            }
            instructions.Add(instruction);
        }
        if (fallsThrough)
        {
            instructions.Add(Instruction.CreateBranch(Code.Jmp_rel32_64, back));
        }

        var writer = new CodeWriterImpl();
        var block = new InstructionBlock(writer, instructions, address + (ulong)relocated);
        if (!BlockEncoder.TryEncode(64, block, out string? error, out BlockEncoderResult encoded, BlockEncoderOptions.ReturnNewInstructionOffsets))
        {
            throw new HotwireException($"cannot relocate the entry at 0x{plan.Patch:x} to 0x{address + (ulong)relocated:x}: {error}");
        }
        byte[] code = new byte[relocated + writer.Bytes.Count];
        BitConverter.TryWriteBytes(code.AsSpan(0, LiteralBytes), back);
        Nop5.CopyTo(code, entry);
        writer.Bytes.CopyTo(code, relocated);
        var boundaries = new List<(int, int)>(starts.Count);
        foreach ((int offset, int index) in starts.Skip(1))
        {
            boundaries.Add((offset, relocated + (int)encoded.NewInstructionOffsets[index]));
        }
        return new Detour(code, entry, relocated, boundaries);
    }

    /// <summary>The <c>jmp</c> that goes where a <c>call</c> went, with the same operand.</summary>
    private static Instruction AsJump(in Instruction call)
    {
        if (call.Op0Kind == OpKind.NearBranch64)
        {
            return Instruction.CreateBranch(Code.Jmp_rel32_64, call.NearBranchTarget);
        }
        if (call.Code == Code.Call_rm64 && call.Op0Kind == OpKind.Register)
        {
            return Instruction.Create(Code.Jmp_rm64, call.Op0Register);
        }
        if (call.Code == Code.Call_rm64 && call.Op0Kind == OpKind.Memory)
        {
            Instruction jump = call;
            jump.Code = Code.Jmp_rm64; // the memory operand (RIP-relative or not) stays as decoded
            return jump;
        }
        throw new HotwireException($"cannot relocate a {call.Mnemonic} at 0x{call.IP:x} as the entry's last instruction");
    }

    private sealed class CodeWriterImpl : CodeWriter
    {
        public List<byte> Bytes { get; } = [];

        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}
