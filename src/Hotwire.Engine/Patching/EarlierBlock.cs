using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Patching;

/// <summary>A trampoline region of an earlier block, as its header describes it.</summary>
internal readonly record struct EarlierRegion(ulong ModuleStart, ulong Address, ulong Size, ulong MemfdOffset, ulong Used);

/// <summary>
/// The block (memfd data and code, trampoline regions, bootstrap area) an earlier Hotwire left in
/// the process. Its code stays mapped after detach because a thread may still run through it; a
/// later attach takes it over instead of adding another, once it has seen that nothing can.
/// </summary>
internal sealed record EarlierBlock(ulong DataBase, ulong DataSize, ulong CodeBase, ulong Total, ulong BootArea, ulong BootSize,
    int Fd, bool Pinned, ulong ShadowMap, ulong ShadowMapSize, ulong ShadowRecords, List<EarlierRegion> Regions, byte[] Header)
{
    /// <summary>The complete, finished blocks in <paramref name="maps"/> (their agents have exited).</summary>
    public static List<EarlierBlock> Find(int pid, IReadOnlyList<MemoryMapping> maps, Memory.ProcessMemory memory)
    {
        var found = new List<EarlierBlock>();
        var header = new byte[L.HeaderSize];
        foreach (MemoryMapping m in maps)
        {
            if (m.Offset != 0 || !m.Path.StartsWith("/memfd:hotwire (deleted)", StringComparison.Ordinal) || !memory.TryRead(m.Start, header))
            {
                continue;
            }
            ulong U(int at) => BitConverter.ToUInt64(header, at);
            if (U(0) != L.Magic || U(L.BlockVersion) != L.BlockLayoutVersion || U(L.AgentState) != 2 || U(L.BlockDataSize) != m.End - m.Start)
            {
                continue;   // another version's, still being set up, or its agent still runs
            }
            int count = (int)U(L.RegionCount);
            if (count > L.RegionMax)
            {
                continue;
            }
            var regions = new List<EarlierRegion>(count);
            for (int i = 0; i < count; i++)
            {
                int e = L.RegionTable + i * L.RegionEntrySize;
                regions.Add(new EarlierRegion(U(e + L.RegionModuleStart), U(e + L.RegionAddress), U(e + L.RegionSize), U(e + L.RegionMemfdOffset), U(e + L.RegionUsed)));
            }
            found.Add(new EarlierBlock(m.Start, U(L.BlockDataSize), U(L.BlockCodeBase), U(L.BlockTotal), U(L.BlockBootArea), U(L.BlockBootSize),
                (int)U(L.MemfdInTarget), U(L.Pinned) != 0, U(L.ShadowMap), U(L.ShadowMapSize), U(L.ShadowRecords), regions, (byte[])header.Clone()));
        }
        return found;
    }

    /// <summary>The ranges of code in the block: a thread whose PC lies there is running through it.</summary>
    public IEnumerable<(ulong Start, ulong End)> CodeRanges =>
        Regions.Select(r => (r.Address, r.Address + r.Size)).Append((CodeBase, CodeBase + Session.MainCodeBytes)).Append((BootArea, BootArea + BootSize));

    public ReadOnlySpan<byte> OldSigaction => Header.AsSpan(L.OldSigaction, 32);

    /// <summary>The processes other than <paramref name="except"/> (and Hotwire) whose maps hold Hotwire's memfd with this inode: forks of a traced process.</summary>
    public static IEnumerable<int> ProcessesMapping(ulong inode, int except)
    {
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == except || pid == Environment.ProcessId)   // Hotwire maps it too
            {
                continue;
            }
            bool maps;
            try
            {
                string text = File.ReadAllText(Path.Combine(dir, "maps"));
                maps = text.Contains("/memfd:hotwire (deleted)", StringComparison.Ordinal)
                    && ProcMaps.Parse(text).Any(m => m.Inode == inode && m.Path.StartsWith("/memfd:hotwire (deleted)", StringComparison.Ordinal));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                maps = false;
            }
            if (maps)
            {
                yield return pid;
            }
        }
    }
}
