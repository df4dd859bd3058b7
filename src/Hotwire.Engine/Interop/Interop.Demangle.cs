namespace Hotwire.Interop;

/// <summary>
/// C++ names are demangled by libstdc++'s own <c>__cxa_demangle</c>: the Itanium ABI demangler that
/// g++ output is defined against, so Hotwire's names agree with gdb, nm -C and c++filt.
/// Writing our own would be thousands of lines that could only drift from it.
/// </summary>
internal static partial class CxxAbi
{
    private static bool s_unavailable;

    [LibraryImport("libstdc++.so.6", EntryPoint = "__cxa_demangle", StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial byte* cxa_demangle(string mangledName, byte* outputBuffer, nuint* length, int* status);

    /// <summary>The demangled name, or the input itself when it is not a mangled C++ name.</summary>
    public static unsafe string Demangle(string name)
    {
        if (!name.StartsWith("_Z", StringComparison.Ordinal) || s_unavailable)
        {
            return name;
        }
        try
        {
            int status;
            byte* result = cxa_demangle(name, null, null, &status);
            if (result == null)
            {
                return name;
            }
            try
            {
                return status == 0 ? Marshal.PtrToStringUTF8((nint)result) ?? name : name;
            }
            finally
            {
                Libc.free(result);
            }
        }
        catch (DllNotFoundException)
        {
            // No libstdc++ on this machine: show mangled names rather than fail.
            s_unavailable = true;
            return name;
        }
    }
}
