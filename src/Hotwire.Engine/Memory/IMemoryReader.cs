namespace Hotwire.Memory;

/// <summary>
/// A span-first reader of an address space (today: a live process through /proc/PID/mem). ELF files
/// are read whole into memory and parsed from spans by <see cref="Elf.ElfFile"/> instead.
/// </summary>
public interface IMemoryReader
{
    /// <summary>Fills <paramref name="destination"/> from <paramref name="address"/>; false when any byte is unreadable.</summary>
    bool TryRead(ulong address, Span<byte> destination);
}
