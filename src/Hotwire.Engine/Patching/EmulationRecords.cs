using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

/// <summary>
/// The records the agent's SIGTRAP handler emulates a site's new instruction from while its byte 0
/// is int3 (the kernel's text_poke_loc: opcode, length, target). Immutable once published and never
/// freed: a handler may read one long after its batch. A trampoline's "call" record sits just before
/// the trampoline (<see cref="Trampolines"/>); NOP records are in the header; the rest are interned here.
/// </summary>
internal sealed class EmulationRecords(SharedHeap heap)
{
    private readonly Dictionary<(byte Kind, byte Advance, ulong Target), ulong> _interned = [];

    /// <summary>The record of a NOP of <paramref name="length"/> bytes: skip them.</summary>
    public ulong Nop(int length) => heap.Address((ulong)(L.NopRecords + length * L.RecordSize));

    /// <summary>The record of <c>jmp target</c>.</summary>
    public ulong Jump(ulong target) => Intern(L.KindJmp, 0, target);

    private ulong Intern(byte kind, byte advance, ulong target)
    {
        if (_interned.TryGetValue((kind, advance, target), out ulong address))
        {
            return address;
        }
        ulong offset = heap.Allocate(L.RecordSize, 16);
        Write(heap.Shared.Bytes(offset, L.RecordSize), kind, advance, target);
        address = heap.Address(offset);
        _interned[(kind, advance, target)] = address;
        return address;
    }

    /// <summary>Fills one record (AgentLayout.Record*).</summary>
    public static void Write(Span<byte> record, byte kind, byte advance, ulong target)
    {
        record.Clear();
        record[L.RecordKind] = kind;
        record[L.RecordAdvance] = advance;
        BitConverter.TryWriteBytes(record[L.RecordTarget..], target);
    }
}
