#include <patronus.hpp>

int check_b() {
    patronus::flag_t f = patronus::RWFlag::kNoLocalExpireCheck | patronus::RWFlag::kUseTwoSided;
    return f == (PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK | PATRONUS_RW_USE_TWO_SIDED) ? 0 : 1;
}
