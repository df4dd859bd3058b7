namespace Hotwire.Memory;

/// <summary>
/// One span-first reader for files on disk and live process memory alike: the ELF parser and
/// the site scanner read through it and never care where the bytes come from.
/// </summary>
public interface IMemoryReader
{
    /// <summary>Fills <paramref name="destination"/> from <paramref name="address"/>; false when any byte is unreadable.</summary>
    bool TryRead(ulong address, Span<byte> destination);
}

/// <summary>Bytes in memory (a file read whole); addresses are offsets.</summary>
public sealed class ByteImage(ReadOnlyMemory<byte> bytes) : IMemoryReader
{
    public ReadOnlyMemory<byte> Bytes { get; } = bytes;

    public bool TryRead(ulong address, Span<byte> destination)
    {
        if (address > (ulong)Bytes.Length || (ulong)destination.Length > (ulong)Bytes.Length - address)
        {
            return false;
        }
        Bytes.Span.Slice((int)address, destination.Length).CopyTo(destination);
        return true;
    }
}
