namespace Hotwire.Tracing;

/// <summary>
/// One event as a tracer's generated code writes it into a thread's ring and the recorder, the
/// packer and the readers take it (docs/data-format.md): u64 fields, then the arguments. The one
/// definition: the tracers' code, <see cref="RawEvent"/>, <see cref="TraceBufferOptions"/> and
/// <see cref="TraceInfo"/> use these.
/// </summary>
public static class EventLayout
{
    /// <summary>rdtsc at the event.</summary>
    public const int Tsc = 0;

    /// <summary>An entry's caller (its return address); a function_graph exit's return value (or 0).</summary>
    public const int Value = 8;

    /// <summary>The site's number; for the function tracer, the events lost before this one in the high half.</summary>
    public const int Site = 16;

    /// <summary>function_graph: kind (bits 0–1), depth (bits 2–31), events lost before this one (bits 32–63).</summary>
    public const int Info = 24;

    /// <summary>function_graph (format 4 on): the frame's shadow-stack slot, which stack and which frame.</summary>
    public const int Slot = 32;

    /// <summary>The function tracer's fixed fields: tsc, caller, site.</summary>
    public const int FunctionFields = 3;

    /// <summary>function_graph's before format 4 (no slot), and since.</summary>
    public const int GraphFieldsWithoutSlot = 4, GraphFields = 5;

    /// <summary>Where argument 0 is in an event of <paramref name="fixedFields"/> fixed fields.</summary>
    public static int ArgsAt(int fixedFields) => 8 * fixedFields;

    /// <summary>An event's bytes.</summary>
    public static int Bytes(int fixedFields, int args) => 8 * (fixedFields + args);
}
