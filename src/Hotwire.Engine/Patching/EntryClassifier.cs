using Hotwire.Elf;
using Hotwire.Symbols;
using Iced.Intel;

namespace Hotwire.Patching;

/// <summary>How a function's entry can be hooked.</summary>
public enum EntryKind
{
    /// <summary>The compiler left a patch site (NOP5 or a sled): the engine's ordinary sites.</summary>
    CompilerSite,
    /// <summary>
    /// No site, but the whole instructions that cover the first 5 bytes (after <c>endbr64</c>) can be
    /// copied into a detour and the entry replaced by a <c>jmp</c> to it.
    /// </summary>
    Relocatable,
    /// <summary>No site, and relocation is unsafe or impossible: <see cref="EntryPlan.Reason"/> says why.</summary>
    Refused,
}

/// <summary>What <see cref="EntryClassifier"/> decided for one function.</summary>
/// <param name="Patch">The first rewritten byte: the entry, or 4 bytes after it past <c>endbr64</c>.</param>
/// <param name="Length">Bytes the relocated instructions take (≥ 5), 0 unless relocatable.</param>
/// <param name="Instructions">How many whole instructions are relocated.</param>
/// <param name="RipRelative">One of them addresses memory relative to RIP (the detour re-targets it).</param>
/// <param name="EndsInBranch">The last one is a branch or call (re-targeted in the detour; a call pushes the original return address).</param>
public readonly record struct EntryPlan(EntryKind Kind, ulong Patch, int Length, int Instructions, bool RipRelative, bool EndsInBranch, string? Reason)
{
    /// <summary>One short phrase: "site", "relocatable: 3 instructions, 8 bytes", or "refused: REASON".</summary>
    public string Describe() => Kind switch
    {
        EntryKind.CompilerSite => "site",
        EntryKind.Relocatable => $"relocatable: {Instructions} instruction{(Instructions == 1 ? "" : "s")}, {Length} bytes"
            + (RipRelative ? ", rip-relative" : "") + (EndsInBranch ? ", ends in a branch" : ""),
        _ => $"refused: {Reason}",
    };
}

/// <summary>
/// Decides, from the bytes alone, whether a function without a compiler site can have its entry
/// relocated (any-binary.md's classes A–C): decode with Iced from the entry (past <c>endbr64</c>,
/// which stays) to the first instruction boundary at or past 5 bytes; refuse undecodable bytes, a range
/// that runs past the function's end, <c>syscall</c>/<c>int</c>/<c>int3</c> inside it, a branch or
/// <c>ret</c> before its last instruction, a <c>call</c> that is not its last instruction, an indirect
/// call through <c>rsp</c> as its last instruction (the detour pushes the return address first), and
/// any direct branch of the module that lands strictly inside it (a loop back-edge into the prologue).
/// A pure function of bytes and branch targets: tested without a process.
/// </summary>
public static class EntryClassifier
{
    /// <summary>Bytes a <c>jmp rel32</c> to the detour takes.</summary>
    public const int JumpBytes = 5;

    /// <summary>Reasons, as printed (the refusal table counts them by these words).</summary>
    public const string TooShort = "shorter than 5 bytes of code from its entry";
    public const string Undecodable = "undecodable bytes at its entry";
    public const string SystemCall = "a syscall or interrupt in its first 5 bytes";
    public const string EarlyBranch = "a branch or return before its first 5 bytes end";
    public const string EarlyCall = "a call that is not the last relocated instruction";
    public const string StackCall = "an indirect call through rsp at its entry";
    public const string JumpIn = "a branch lands inside its first 5 bytes";

    private static readonly byte[] Endbr64 = [0xf3, 0x0f, 0x1e, 0xfa];

    /// <summary>
    /// Classifies the function at <paramref name="address"/> whose bytes are <paramref name="body"/> (its whole
    /// size). <paramref name="branchTargets"/>: every direct branch target of the module, sorted (see <see cref="BranchTargets"/>).
    /// </summary>
    public static EntryPlan Classify(ReadOnlySpan<byte> body, ulong address, ReadOnlySpan<ulong> branchTargets)
    {
        int skip = body.StartsWith(Endbr64) ? Endbr64.Length : 0;
        ulong patch = address + (ulong)skip;
        if (body.Length - skip < JumpBytes)
        {
            return Refuse(patch, TooShort);
        }
        var reader = new ByteArrayCodeReader(body[skip..].ToArray());
        var decoder = Decoder.Create(64, reader, patch);
        int length = 0, count = 0;
        bool ripRelative = false, endsInBranch = false;
        while (length < JumpBytes)
        {
            if (!reader.CanReadByte)
            {
                return Refuse(patch, TooShort);
            }
            decoder.Decode(out Instruction instruction);
            if (instruction.IsInvalid)
            {
                return Refuse(patch, decoder.LastError == DecoderError.NoMoreBytes ? TooShort : Undecodable);
            }
            count++;
            length += instruction.Length;
            bool last = length >= JumpBytes;
            ripRelative |= instruction.IsIPRelativeMemoryOperand;
            if (instruction.Mnemonic is Mnemonic.Syscall or Mnemonic.Sysenter)
            {
                return Refuse(patch, SystemCall);
            }
            switch (instruction.FlowControl)
            {
                case FlowControl.Next:
                    break;
                case FlowControl.Interrupt:
                case FlowControl.Exception:
                    return Refuse(patch, SystemCall);
                case FlowControl.Call:
                case FlowControl.IndirectCall:
                    if (!last)
                    {
                        return Refuse(patch, EarlyCall);
                    }
                    if (instruction.FlowControl == FlowControl.IndirectCall && UsesRsp(instruction))
                    {
                        return Refuse(patch, StackCall);
                    }
                    endsInBranch = true;
                    break;
                default: // jcc, jmp, ret, indirect jmp, xbegin
                    if (!last)
                    {
                        return Refuse(patch, EarlyBranch);
                    }
                    endsInBranch = true;
                    break;
            }
        }
        // A branch to the entry itself (a tail call to the function) is a call as any other; one to a later byte of the range is not.
        int i = LowerBound(branchTargets, patch + 1);
        if (i < branchTargets.Length && branchTargets[i] < patch + (ulong)length)
        {
            return Refuse(patch, JumpIn);
        }
        return new EntryPlan(EntryKind.Relocatable, patch, length, count, ripRelative, endsInBranch, null);
    }

    /// <summary>
    /// Every direct branch target (jmp, jcc, call, loop, jrcxz, xbegin) found by decoding each function's
    /// bytes in <paramref name="functions"/>, sorted. Undecodable bytes are stepped over one at a time.
    /// </summary>
    public static ulong[] BranchTargets(ElfFile elf, IReadOnlyList<FunctionEntry> functions)
    {
        var targets = new List<ulong>();
        byte[] buffer = [];
        foreach (FunctionEntry function in functions)
        {
            if (function.Size == 0 || function.Size > 1 << 24)
            {
                continue;
            }
            if (buffer.Length < (int)function.Size)
            {
                buffer = new byte[Math.Max((int)function.Size, buffer.Length * 2)];
            }
            Span<byte> bytes = buffer.AsSpan(0, (int)function.Size);
            if (!elf.TryReadVirtual(function.Address, bytes))
            {
                continue;
            }
            var reader = new ByteArrayCodeReader(buffer, 0, (int)function.Size);
            var decoder = Decoder.Create(64, reader, function.Address);
            while (reader.CanReadByte)
            {
                decoder.Decode(out Instruction instruction);
                if (instruction.IsInvalid)
                {
                    continue; // the decoder moved past what it could not decode
                }
                if (instruction.Op0Kind == OpKind.NearBranch64)
                {
                    targets.Add(instruction.NearBranchTarget);
                }
            }
        }
        targets.Sort();
        return [.. targets];
    }

    /// <summary>Classifies every function of a file: compiler sites where <paramref name="siteFunctions"/> has them, else by <see cref="Classify"/>.</summary>
    /// <param name="only">when given, only these functions are classified (branches into them are still looked for in all)</param>
    public static List<(FunctionEntry Function, EntryPlan Plan)> ClassifyAll(ElfFile elf, IReadOnlyList<FunctionEntry> functions, IReadOnlySet<ulong> siteFunctions,
        Func<FunctionEntry, bool>? only = null)
    {
        ulong[] targets = BranchTargets(elf, functions);
        var result = new List<(FunctionEntry, EntryPlan)>(only is null ? functions.Count : 4);
        byte[] buffer = [];
        foreach (FunctionEntry function in functions)
        {
            if (only is not null && !only(function))
            {
                continue;
            }
            if (siteFunctions.Contains(function.Address))
            {
                result.Add((function, new EntryPlan(EntryKind.CompilerSite, function.Address, 0, 0, false, false, null)));
                continue;
            }
            int size = (int)Math.Min(function.Size, 1 << 24);
            if (buffer.Length < size)
            {
                buffer = new byte[Math.Max(size, buffer.Length * 2)];
            }
            Span<byte> bytes = buffer.AsSpan(0, size);
            // The ELF entry point (_start) is jumped to by the kernel with argc, not a return
            // address, on top of the stack: a tracer that takes over the return slot would break it.
            EntryPlan plan = function.Address == elf.EntryPoint && elf.EntryPoint != 0
                ? Refuse(function.Address, EntryPointReason)
                : elf.TryReadVirtual(function.Address, bytes)
                ? Classify(bytes, function.Address, targets)
                : Refuse(function.Address, "its bytes are not in the file");
            result.Add((function, plan));
        }
        return result;
    }

    private static EntryPlan Refuse(ulong patch, string reason) => new(EntryKind.Refused, patch, 0, 0, false, false, reason);

    /// <summary>Why the ELF entry point is refused.</summary>
    public const string EntryPointReason = "the file's entry point (the kernel jumps to it; nothing calls it)";

    private static bool UsesRsp(in Instruction instruction)
    {
        for (int i = 0; i < instruction.OpCount; i++)
        {
            OpKind kind = instruction.GetOpKind(i);
            if (kind == OpKind.Register && instruction.GetOpRegister(i) is Register.RSP or Register.ESP or Register.SP)
            {
                return true;
            }
            if (kind == OpKind.Memory && (instruction.MemoryBase == Register.RSP || instruction.MemoryIndex == Register.RSP))
            {
                return true;
            }
        }
        return false;
    }

    private static int LowerBound(ReadOnlySpan<ulong> sorted, ulong value)
    {
        int lo = 0, hi = sorted.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (sorted[mid] < value)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }
        return lo;
    }
}
