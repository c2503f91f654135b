{
  "targets": [
    {
      "target_name": "blockrep_native",
      "sources": ["src/blockrep-native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"]
    }
  ]
}
