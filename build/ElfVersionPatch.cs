// Marks one symbol-version requirement of an ELF64 shared library as weak (VER_FLG_WEAK), so that
// glibc's loader accepts the library where that version is missing. Used for libLibTorchSharp.so
// (TorchSharp 0.107), built with GCC 13, which asks for GLIBCXX_3.4.32 only to pin its libstdc++:
// the one symbol of that version (_ZSt21ios_base_library_initv) is never relocated against.
// See shared/notes/torchsharp-native.md and docs/torchsharp-native.md.
//
// This one file serves twice: MSBuild compiles it as an inline task (Directory.Build.targets), and
// Host.CSharp compiles it (with SSL_HOST defined) to patch at run time for F# scripts.
#nullable enable
using System;
using System.IO;
using System.Text;

namespace Ssl.Build
{
    public enum ElfPatchOutcome { Patched, AlreadyWeak, VersionNotRequired }

    public static class ElfVersionPatch
    {
        const uint ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlgWeak = 0x2;

        /// The libstdc++ version that libLibTorchSharp.so 0.107 asks for.
        public const string TorchSharpGlibcxx = "GLIBCXX_3.4.32";

        static readonly string[] LibStdCxxCandidates =
        {
            "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };

        /// The system libstdc++ path, or null when none is found (not Linux, or an unusual layout).
        public static string? FindSystemLibStdCxx()
        {
            foreach (var path in LibStdCxxCandidates)
                if (File.Exists(path)) return path;
            return null;
        }

        /// True where the system's libstdc++ defines `version` (then nothing needs patching).
        public static bool SystemProvides(string version)
        {
            var lib = FindSystemLibStdCxx();
            if (lib is null) return true;
            var needle = Encoding.ASCII.GetBytes(version + "\0");
            return IndexOf(File.ReadAllBytes(lib), needle) >= 0;
        }

        /// Sets VER_FLG_WEAK on the requirement named `version` in `path`; idempotent.
        public static ElfPatchOutcome MakeVersionWeak(string path, string version)
        {
            var bytes = File.ReadAllBytes(path);
            var flagsOffset = FindVernauxFlags(bytes, path, version);
            if (flagsOffset < 0) return ElfPatchOutcome.VersionNotRequired;
            var flags = ReadU16(bytes, flagsOffset);
            if ((flags & VerFlgWeak) != 0) return ElfPatchOutcome.AlreadyWeak;
            var patched = (ushort)(flags | VerFlgWeak);
            // Write only the two bytes, through a temp copy + rename so a crash never leaves half a file.
            bytes[flagsOffset] = (byte)(patched & 0xff);
            bytes[flagsOffset + 1] = (byte)(patched >> 8);
            var temp = path + ".ssl-patch.tmp";
            File.WriteAllBytes(temp, bytes);
            File.Replace(temp, path, null);
            return ElfPatchOutcome.Patched;
        }

        /// True when `path` requires `version` and that requirement is already weak.
        public static bool IsWeak(string path, string version)
        {
            var bytes = File.ReadAllBytes(path);
            var offset = FindVernauxFlags(bytes, path, version);
            return offset >= 0 && (ReadU16(bytes, offset) & VerFlgWeak) != 0;
        }

        /// Offset of vna_flags of the Elf64_Vernaux named `version`, or -1 when the file does not require it.
        static int FindVernauxFlags(byte[] b, string path, string version)
        {
            if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
                throw new InvalidDataException($"{path}: expected an ELF file (magic 7f 45 4c 46), found another format");
            if (b[4] != 2 || b[5] != 1)
                throw new InvalidDataException($"{path}: expected a 64-bit little-endian ELF, found class {b[4]}, data {b[5]}");
            var shoff = checked((int)ReadU64(b, 0x28));
            var shentsize = ReadU16(b, 0x3a);
            var shnum = ReadU16(b, 0x3c);
            for (var i = 0; i < shnum; i++)
            {
                var sh = shoff + i * shentsize;
                if (ReadU32(b, sh + 4) != ShtGnuVerneed) continue;
                var secOffset = checked((int)ReadU64(b, sh + 0x18));
                var link = (int)ReadU32(b, sh + 0x28);
                var strOffset = checked((int)ReadU64(b, shoff + link * shentsize + 0x18));
                var need = secOffset;
                while (true)
                {
                    var count = ReadU16(b, need + 2);
                    var aux = need + (int)ReadU32(b, need + 8);
                    for (var j = 0; j < count; j++)
                    {
                        if (ReadCString(b, strOffset + (int)ReadU32(b, aux + 8)) == version) return aux + 4;
                        aux += (int)ReadU32(b, aux + 12);
                    }
                    var next = (int)ReadU32(b, need + 12);
                    if (next == 0) break;
                    need += next;
                }
            }
            return -1;
        }

        static ushort ReadU16(byte[] b, int o) => (ushort)(b[o] | b[o + 1] << 8);
        static uint ReadU32(byte[] b, int o) => (uint)(b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24);
        static ulong ReadU64(byte[] b, int o) => ReadU32(b, o) | (ulong)ReadU32(b, o + 4) << 32;

        static string ReadCString(byte[] b, int o)
        {
            var end = o;
            while (end < b.Length && b[end] != 0) end++;
            return Encoding.ASCII.GetString(b, o, end - o);
        }

        static int IndexOf(byte[] hay, byte[] needle)
        {
            var first = needle[0];
            for (var i = Array.IndexOf(hay, first); i >= 0 && i <= hay.Length - needle.Length; i = Array.IndexOf(hay, first, i + 1))
            {
                var k = 1;
                while (k < needle.Length && hay[i + k] == needle[k]) k++;
                if (k == needle.Length) return i;
            }
            return -1;
        }
    }

#if !SSL_HOST
    /// MSBuild task: patch every libLibTorchSharp.so given, where the system libstdc++ lacks the version.
    public class SslPatchTorchSharpNative : Microsoft.Build.Utilities.Task
    {
        public Microsoft.Build.Framework.ITaskItem[] Files { get; set; } = Array.Empty<Microsoft.Build.Framework.ITaskItem>();

        public override bool Execute()
        {
            if (ElfVersionPatch.SystemProvides(ElfVersionPatch.TorchSharpGlibcxx))
            {
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.Low,
                    $"System libstdc++ provides {ElfVersionPatch.TorchSharpGlibcxx}: TorchSharp natives left as shipped.");
                return true;
            }
            foreach (var item in Files)
            {
                var outcome = ElfVersionPatch.MakeVersionWeak(item.ItemSpec, ElfVersionPatch.TorchSharpGlibcxx);
                var importance = outcome == ElfPatchOutcome.Patched
                    ? Microsoft.Build.Framework.MessageImportance.High
                    : Microsoft.Build.Framework.MessageImportance.Low;
                Log.LogMessage(importance, $"TorchSharp native fix: {item.ItemSpec}: {outcome}");
            }
            return !Log.HasLoggedErrors;
        }
    }
#endif
}
