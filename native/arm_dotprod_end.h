/* ends arm_dotprod_begin.h */
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef MOTE_ARM_DOTPROD
