// Two translation units include patronus.hpp and link together (no ODR
// violations, everything inline).
#include <patronus.hpp>

#include <cstdio>

int check_b();

int main() {
    using namespace patronus;
    RetCode rc = kOk;
    if (rc != kOk || !(RetCode(kRdmaProtectionErr) == kRdmaProtectionErr)) return 1;
    if (RetCode().code() != kReserved) return 2;
    if (RetCode(kRdmaProtectionErr).str() != "RDMA protection error") return 3;
    GlobalAddress g(3, 4096);
    if (g.nodeID != 3 || g.offset != 4096 || g.is_null()) return 4;
    if (g.val() != patronus_gaddr(3, 4096).val) return 5;
    if (GlobalAddress(g.to_c()) != g) return 6;
    flag_t f = AcquireRequestFlag::kNoGc | AcquireRequestFlag::kNoBindPR;
    if (f != (PATRONUS_ACQUIRE_NO_GC | PATRONUS_ACQUIRE_NO_BIND_PR)) return 7;
    if (static_cast<int>(AcquireRequestStatus::kNoMw) != 7) return 8;
    CoroContext *ctx = nullptr;
    (void)ctx;
    if (check_b() != 0) return 9;
    std::printf("ok\n");
    return 0;
}
