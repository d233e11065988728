/* Open MPI, for Swift. Open MPI's handles (MPI_COMM_WORLD, MPI_BYTE …) are
   macros over addresses of library globals, which Swift does not import;
   these inline accessors stand in for them. Header-only on purpose: a C
   target that includes <mpi.h> would break the build where MPI is absent,
   and this system library is only built with the package's `MPI` trait. */
#ifndef CMPI_H
#define CMPI_H

#include <mpi.h>

static inline MPI_Comm cmpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm cmpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Comm cmpi_comm_self(void) { return MPI_COMM_SELF; }
static inline MPI_Datatype cmpi_byte(void) { return MPI_BYTE; }
static inline MPI_Info cmpi_info_null(void) { return MPI_INFO_NULL; }
static inline MPI_Request cmpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Errhandler cmpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *cmpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int *cmpi_errcodes_ignore(void) { return MPI_ERRCODES_IGNORE; }
static inline int cmpi_any_source(void) { return MPI_ANY_SOURCE; }
static inline int cmpi_any_tag(void) { return MPI_ANY_TAG; }
static inline int cmpi_status_source(const MPI_Status *status) { return status->MPI_SOURCE; }
static inline int cmpi_status_tag(const MPI_Status *status) { return status->MPI_TAG; }

#endif
