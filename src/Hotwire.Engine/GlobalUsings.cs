// The engine's own namespaces, used across it: once here instead of at the top of each file.
global using Hotwire.Agent;
global using Hotwire.Injection;
global using Hotwire.Interop;
global using Hotwire.Memory;
global using Hotwire.Procfs;
global using System.Runtime.InteropServices;
