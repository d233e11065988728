/* The code ranges the stop-the-world fork (quiesce.c) judges parked threads
   by: the Swift runtime's C++ functions that may hold one of its locks (from
   libswiftCore's symbol table), the C and C++ libraries' code (no frame
   pointers), and every image's executable segments (to tell a return
   address). Found once, at the first fork, before any thread is parked. */
#define _GNU_SOURCE
#include "code_ranges.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>


typedef struct { uintptr_t start, end; } code_range_t;

static code_range_t *runtime_ranges;   /* sorted, disjoint */
static size_t runtime_range_count;
static code_range_t system_ranges[16];  /* executable segments of the C and C++ libraries: no frame pointers */
static int system_range_count;
static code_range_t code_ranges[256];   /* executable segments of every image loaded at the first fork */
static int code_range_count;
static int runtime_symbols_found;
/* swift_once's slow path, which runs a lazy global's initializer holding
   nothing but that global's once-flag. */
static code_range_t once_range;

static int in_ranges(const code_range_t *ranges, size_t count, uintptr_t address) {
    size_t low = 0, high = count;
    while (low < high) {
        size_t middle = (low + high) / 2;
        if (address < ranges[middle].start) high = middle;
        else if (address >= ranges[middle].end) low = middle + 1;
        else return 1;
    }
    return 0;
}

/* Runtime entry points that take no lock of the runtime's: reference
   counting, allocation, exclusivity checks, value witnesses. A thread seen
   in one of them is not holding anything a child would need. */
static int lock_free_runtime_function(const char *name) {
    static const char *const prefixes[] = {
        "swift_retain", "swift_release", "swift_nonatomic_", "swift_bridgeObject",
        "swift_unknownObject", "swift_allocObject", "swift_allocBox", "swift_allocEmptyBox",
        "swift_dealloc", "swift_slowAlloc", "swift_slowDealloc", "swift_beginAccess",
        "swift_endAccess", "swift_isUniquelyReferenced", "swift_isEscapingClosure",
        "swift_arrayInit", "swift_arrayDestroy", "swift_arrayAssign", "__swift_memcpy",
        "swift_weak", "swift_unowned", "swift_errorRetain", "swift_errorRelease",
        "swift_cvw_", "swift_generic_", "swift_projectBox", "swift_getObjectType",
    };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        if (strncmp(name, prefixes[i], strlen(prefixes[i])) == 0) return 1;
    }
    return 0;
}

typedef struct { uintptr_t start, end; int unsafe; } function_t;

static int compare_functions(const void *a, const void *b) {
    uintptr_t x = ((const function_t *)a)->start, y = ((const function_t *)b)->start;
    return (x > y) - (x < y);
}

/* Reads libswiftCore's symbol table from its file: every function that is
   not Swift (`$s…`) and not lock-free is runtime C++ code. */
static int load_runtime_symbols(const char *path, uintptr_t base) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) return -1;
    struct stat info;
    if (fstat(fd, &info) == -1 || (size_t)info.st_size < sizeof(Elf64_Ehdr)) { close(fd); return -1; }
    size_t size = (size_t)info.st_size;
    const unsigned char *file = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (file == MAP_FAILED) return -1;
    int result = -1;
    const Elf64_Ehdr *header = (const Elf64_Ehdr *)file;
    if (memcmp(header->e_ident, ELFMAG, SELFMAG) != 0 || header->e_shoff == 0 ||
        header->e_shoff + (size_t)header->e_shnum * sizeof(Elf64_Shdr) > size) goto done;
    const Elf64_Shdr *sections = (const Elf64_Shdr *)(file + header->e_shoff);
    for (int s = 0; s < header->e_shnum; s++) {
        if (sections[s].sh_type != SHT_SYMTAB) continue;
        const Elf64_Shdr *symtab = &sections[s];
        if (symtab->sh_link >= header->e_shnum) break;
        const Elf64_Shdr *strtab = &sections[symtab->sh_link];
        if (symtab->sh_offset + symtab->sh_size > size || strtab->sh_offset + strtab->sh_size > size) break;
        const Elf64_Sym *symbols = (const Elf64_Sym *)(file + symtab->sh_offset);
        size_t count = symtab->sh_size / sizeof(Elf64_Sym);
        const char *names = (const char *)(file + strtab->sh_offset);
        function_t *functions = malloc(count * sizeof(function_t));
        if (functions == NULL) break;
        size_t n = 0;
        for (size_t i = 0; i < count; i++) {
            const Elf64_Sym *symbol = &symbols[i];
            if (ELF64_ST_TYPE(symbol->st_info) != STT_FUNC || symbol->st_size == 0 ||
                symbol->st_shndx == SHN_UNDEF || symbol->st_name >= strtab->sh_size) continue;
            const char *name = names + symbol->st_name;
            int swift = name[0] == '$' && name[1] == 's';
            functions[n].start = base + symbol->st_value;
            functions[n].end = base + symbol->st_value + symbol->st_size;
            functions[n].unsafe = !swift && !lock_free_runtime_function(name);
            if (strncmp(name, "_ZN5swift14threading_impl9once_slow", 35) == 0) {
                once_range.start = functions[n].start;
                once_range.end = functions[n].end;
            }
            n++;
        }
        qsort(functions, n, sizeof(function_t), compare_functions);
        /* Runs of unsafe functions, with nothing safe between, become one range. */
        code_range_t *ranges = malloc((n + 1) * sizeof(code_range_t));
        if (ranges == NULL) { free(functions); break; }
        size_t r = 0;
        for (size_t i = 0; i < n; i++) {
            if (!functions[i].unsafe) continue;
            if (r > 0 && i > 0 && functions[i - 1].unsafe && functions[i].start <= ranges[r - 1].end + 64) {
                if (functions[i].end > ranges[r - 1].end) ranges[r - 1].end = functions[i].end;
            } else {
                ranges[r].start = functions[i].start;
                ranges[r].end = functions[i].end;
                r++;
            }
        }
        free(functions);
        runtime_ranges = ranges;
        runtime_range_count = r;
        result = 0;
        break;
    }
done:
    munmap((void *)file, size);
    return result;
}

typedef struct { const char *runtime_path; uintptr_t runtime_base; code_range_t runtime_text; } image_scan_t;

static int scan_image(struct dl_phdr_info *image, size_t size, void *context) {
    (void)size;
    image_scan_t *scan = context;
    const char *name = image->dlpi_name ? image->dlpi_name : "";
    int runtime = strstr(name, "libswiftCore.so") != NULL;
    int system = strstr(name, "/libc.so") != NULL || strstr(name, "/ld-linux") != NULL ||
                 strstr(name, "/libstdc++.so") != NULL || strstr(name, "/libgcc_s.so") != NULL ||
                 strstr(name, "/libm.so") != NULL;
    for (int i = 0; i < image->dlpi_phnum; i++) {
        const ElfW(Phdr) *segment = &image->dlpi_phdr[i];
        if (segment->p_type != PT_LOAD || !(segment->p_flags & PF_X)) continue;
        code_range_t range = { image->dlpi_addr + segment->p_vaddr, image->dlpi_addr + segment->p_vaddr + segment->p_memsz };
        if (code_range_count < 256) code_ranges[code_range_count++] = range;
        if (runtime) {
            scan->runtime_text = range;
        } else if (system && system_range_count < 16) {
            system_ranges[system_range_count++] = range;
        }
    }
    if (runtime) {
        scan->runtime_path = name;
        scan->runtime_base = image->dlpi_addr;
    }
    return 0;
}

static int compare_ranges(const void *a, const void *b) {
    uintptr_t x = ((const code_range_t *)a)->start, y = ((const code_range_t *)b)->start;
    return (x > y) - (x < y);
}

static pthread_once_t code_ranges_once = PTHREAD_ONCE_INIT;

static void find_code_ranges(void) {
    image_scan_t scan = { NULL, 0, { 0, 0 } };
    dl_iterate_phdr(scan_image, &scan);
    qsort(system_ranges, (size_t)system_range_count, sizeof(code_range_t), compare_ranges);
    qsort(code_ranges, (size_t)code_range_count, sizeof(code_range_t), compare_ranges);
    if (scan.runtime_path != NULL && load_runtime_symbols(scan.runtime_path, scan.runtime_base) == 0) {
        runtime_symbols_found = 1;
    } else if (scan.runtime_text.end > scan.runtime_text.start) {
        /* No symbol table: all of the runtime library's code counts. */
        static code_range_t whole;
        whole = scan.runtime_text;
        runtime_ranges = &whole;
        runtime_range_count = 1;
    }
}

int cmp_load_code_ranges(void) {
    pthread_once(&code_ranges_once, find_code_ranges);
    return runtime_symbols_found;
}

int cmp_in_runtime(uintptr_t address) {
    return in_ranges(runtime_ranges, runtime_range_count, address);
}

int cmp_in_system_code(uintptr_t pc) {
    return in_ranges(system_ranges, (size_t)system_range_count, pc);
}

static int in_once_slow(uintptr_t ret) { return ret > once_range.start && ret <= once_range.end; }

int cmp_is_runtime_return(uintptr_t ret) {
    return ret != 0 && !in_once_slow(ret) && in_ranges(runtime_ranges, runtime_range_count, ret - 1);
}

uintptr_t cmp_code_start_of(uintptr_t address) {
    size_t low = 0, high = (size_t)code_range_count;
    while (low < high) {
        size_t middle = (low + high) / 2;
        if (address < code_ranges[middle].start) high = middle;
        else if (address >= code_ranges[middle].end) low = middle + 1;
        else return code_ranges[middle].start;
    }
    return 0;
}
