//! What the kernels need to know about the CPU beyond what `is_x86_feature_detected!` tells:
//! cache sizes, and whether the AMX tile unit is usable by this process.

/// Data cache sizes of one core, read from CPUID where the CPU reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCaches {
    /// Level-1 data cache, bytes.
    pub l1d_bytes: usize,
    /// Level-2 cache, bytes.
    pub l2_bytes: usize,
}

impl CpuCaches {
    /// Sizes assumed where CPUID does not say: 32 KiB L1D and 512 KiB L2, the smallest of the
    /// x86-64 server cores of the last decade.
    pub const FALLBACK: CpuCaches = CpuCaches {
        l1d_bytes: 32 << 10,
        l2_bytes: 512 << 10,
    };

    /// This CPU's cache sizes (Intel's CPUID leaf 4, AMD's leaf 0x8000_001D), or
    /// [`CpuCaches::FALLBACK`] for any size the CPU does not report.
    pub fn detect() -> CpuCaches {
        // Miri cannot run CPUID (inline assembly).
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            let (l1d, l2) = x86::cache_sizes();
            CpuCaches {
                l1d_bytes: l1d.unwrap_or(Self::FALLBACK.l1d_bytes),
                l2_bytes: l2.unwrap_or(Self::FALLBACK.l2_bytes),
            }
        }
        #[cfg(any(not(target_arch = "x86_64"), miri))]
        Self::FALLBACK
    }
}

/// Whether this process can run AMX bf16 tile instructions: the CPU has AMX-TILE and AMX-BF16
/// (Intel Xeon from Sapphire Rapids on), the operating system saves the tile state (XCR0 bits
/// 17 and 18) and, on Linux, granted this process the tile data (`arch_prctl`
/// `ARCH_REQ_XCOMP_PERM`, asked once, for the whole process). Other systems: false.
pub fn amx_bf16_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            x86::amx_bf16_in_cpu_and_os() && x86::request_tile_data()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// Whether this process can also run the AMX int8 tile instructions: [`amx_bf16_usable`] and
/// CPUID's AMX-INT8.
pub fn amx_int8_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        const AMX_INT8: u32 = 1 << 25; // leaf 7, EDX
        amx_bf16_usable() && std::arch::x86_64::__cpuid_count(7, 0).edx & AMX_INT8 != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};

    /// CPUID says AMX-TILE and AMX-BF16, and XCR0 says the OS manages both tile components.
    #[cfg(target_os = "linux")]
    pub(super) fn amx_bf16_in_cpu_and_os() -> bool {
        const OSXSAVE: u32 = 1 << 27; // leaf 1, ECX
        const AMX_BF16: u32 = 1 << 22; // leaf 7, EDX
        const AMX_TILE: u32 = 1 << 24; // leaf 7, EDX
        const XTILE_CFG_AND_DATA: u64 = (1 << 17) | (1 << 18); // XCR0
        if __cpuid(0).eax < 7 || __cpuid(1).ecx & OSXSAVE == 0 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        if edx & AMX_TILE == 0 || edx & AMX_BF16 == 0 {
            return false;
        }
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 reads XCR0; it exists wherever CPUID reports OSXSAVE
        // (checked above) and only writes EAX and EDX.
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        let xcr0 = (u64::from(hi) << 32) | u64::from(lo);
        xcr0 & XTILE_CFG_AND_DATA == XTILE_CFG_AND_DATA
    }

    /// Asks Linux (5.16 and later) to let this process use the AMX tile data; false if refused.
    #[cfg(target_os = "linux")]
    pub(super) fn request_tile_data() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) takes two integers, touches no memory of
        // ours, and only enlarges the state the kernel saves for this process.
        let status = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        status == 0
    }

    /// L1 data and L2 sizes in bytes from the deterministic cache parameters leaf.
    pub(super) fn cache_sizes() -> (Option<usize>, Option<usize>) {
        // Leaves beyond the maximum are not queried (checked against leaves 0 and 0x8000_0000).
        let l0 = __cpuid(0);
        let (vendor, max_leaf, max_ext) = (l0.ebx, l0.eax, __cpuid(0x8000_0000).eax);
        const AMD: u32 = u32::from_le_bytes(*b"Auth");
        let leaf = if vendor == AMD {
            if max_ext < 0x8000_001D {
                return (None, None);
            }
            0x8000_001D
        } else {
            if max_leaf < 4 {
                return (None, None);
            }
            4
        };
        let (mut l1d, mut l2) = (None, None);
        for sub in 0..16 {
            let r: CpuidResult = __cpuid_count(leaf, sub);
            let kind = r.eax & 0x1F;
            if kind == 0 {
                break;
            }
            let level = (r.eax >> 5) & 0x7;
            let ways = ((r.ebx >> 22) & 0x3FF) as usize + 1;
            let partitions = ((r.ebx >> 12) & 0x3FF) as usize + 1;
            let line = (r.ebx & 0xFFF) as usize + 1;
            let sets = r.ecx as usize + 1;
            let bytes = ways * partitions * line * sets;
            match (level, kind) {
                (1, 1) => l1d = Some(bytes),    // level 1, data
                (2, 1 | 3) => l2 = Some(bytes), // level 2, data or unified
                _ => {}
            }
        }
        (l1d, l2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_sizes_are_plausible() {
        let c = CpuCaches::detect();
        assert!((8 << 10..=1 << 20).contains(&c.l1d_bytes), "{c:?}");
        assert!((64 << 10..=64 << 20).contains(&c.l2_bytes), "{c:?}");
    }
}
