// Byte layout of one block record of the quantized KV cache (kv_quant.cu, kvq_mma.cuh): G tokens of one
// (layer, KV head), hd channels, b bits per code:
//   f16 key zero [hd] | f16 key scale [hd] | f16 value zero [G][ng] | f16 value scale [G][ng] |
//   key codes [hd][ceil(G*b/8)] (per channel, packed along tokens) | value codes [G][ceil(hd*b/8)] (per token,
//   packed along channels); padded to 16 bytes. ng = hd / gs, gs = min(G, hd).
// Free of CUDA headers so that the host emulation of the kernels (tests/resources/cuda) includes it too.
#pragma once

namespace tp {

struct Layout {  // byte offsets inside one block record
    int hd, G, bits, gs, ng, rbk, rbv;
    int off_kz, off_ks, off_vz, off_vs, off_kc, off_vc, bytes;
};

__host__ __device__ inline Layout make_layout(int hd, int G, int bits) {
    Layout L;
    L.hd = hd;
    L.G = G;
    L.bits = bits;
    L.gs = G < hd ? G : hd;
    L.ng = hd / L.gs;
    L.rbk = (G * bits + 7) / 8;
    L.rbv = (hd * bits + 7) / 8;
    L.off_kz = 0;
    L.off_ks = 2 * hd;
    L.off_vz = 4 * hd;
    L.off_vs = 4 * hd + 2 * G * L.ng;
    L.off_kc = 4 * hd + 4 * G * L.ng;
    L.off_vc = L.off_kc + hd * L.rbk;
    L.bytes = (L.off_vc + G * L.rbv + 15) & ~15;
    return L;
}

}  // namespace tp
