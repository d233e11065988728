// Where code is: a code address as (image build ID, offset), and back.
//
// A pool worker started by spawn or the forkserver runs the same executable
// and libraries as its parent, loaded at other addresses. A closure that
// captures nothing is a code address only; named by the build ID of the
// image that holds it and the offset in that image, the worker finds the
// same code in its own copy.

#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <string.h>
#include "CMultiprocessing.h"

// The GNU build ID of the object described by `info`, or 0 if it has none.
static size_t build_id_of(struct dl_phdr_info *info, const uint8_t **bytes) {
    for (int index = 0; index < info->dlpi_phnum; index++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[index];
        if (header->p_type != PT_NOTE) continue;
        const uint8_t *note = (const uint8_t *)(info->dlpi_addr + header->p_vaddr);
        const uint8_t *end = note + header->p_memsz;
        while (note + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *entry = (const ElfW(Nhdr) *)note;
            const uint8_t *name = note + sizeof(ElfW(Nhdr));
            const uint8_t *descriptor = name + ((entry->n_namesz + 3) & ~3u);
            const uint8_t *next = descriptor + ((entry->n_descsz + 3) & ~3u);
            if (next > end) break;
            if (entry->n_type == NT_GNU_BUILD_ID && entry->n_namesz == 4 && memcmp(name, "GNU", 4) == 0) {
                *bytes = descriptor;
                return entry->n_descsz;
            }
            note = next;
        }
    }
    return 0;
}

// Whether [address, address + 1) is in an executable loaded segment of `info`.
static int is_code(struct dl_phdr_info *info, uintptr_t address) {
    for (int index = 0; index < info->dlpi_phnum; index++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[index];
        if (header->p_type != PT_LOAD || !(header->p_flags & PF_X)) continue;
        uintptr_t start = info->dlpi_addr + header->p_vaddr;
        if (address >= start && address < start + header->p_memsz) return 1;
    }
    return 0;
}

struct locating {
    uintptr_t address;
    cmp_code_location_t *location;
    int found;
};

static int locate_in(struct dl_phdr_info *info, size_t size, void *context) {
    (void)size;
    struct locating *search = context;
    if (!is_code(info, search->address)) return 0;
    const uint8_t *bytes = NULL;
    size_t count = build_id_of(info, &bytes);
    if (count == 0 || count > sizeof search->location->build_id) return 1;  // found, but cannot be named
    memcpy(search->location->build_id, bytes, count);
    search->location->build_id_length = (uint32_t)count;
    search->location->offset = search->address - info->dlpi_addr;
    search->found = 1;
    return 1;
}

int cmp_code_locate(const void *address, cmp_code_location_t *location) {
    struct locating search = { (uintptr_t)address, location, 0 };
    dl_iterate_phdr(locate_in, &search);
    return search.found;
}

struct resolving {
    const cmp_code_location_t *location;
    const void *address;
};

static int resolve_in(struct dl_phdr_info *info, size_t size, void *context) {
    (void)size;
    struct resolving *search = context;
    const uint8_t *bytes = NULL;
    size_t count = build_id_of(info, &bytes);
    if (count != search->location->build_id_length || memcmp(bytes, search->location->build_id, count) != 0) return 0;
    uintptr_t address = info->dlpi_addr + (uintptr_t)search->location->offset;
    if (address >= info->dlpi_addr && is_code(info, address)) search->address = (const void *)address;
    return 1;
}

const void *cmp_code_resolve(const cmp_code_location_t *location) {
    if (location->build_id_length == 0 || location->build_id_length > sizeof location->build_id) return NULL;
    struct resolving search = { location, NULL };
    dl_iterate_phdr(resolve_in, &search);
    return search.address;
}
